"""The pieces every HTML report is made of: self-contained pages (inline CSS, figures embedded as
base64 PNG, no script, no network access at view time), sections, tables, the demo banner, notes.
Each command's report module (calib.report.run, .compare, .sensitivity) assembles its page."""

from __future__ import annotations

import base64
import html

from calib.report.format import db

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 30px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; margin: 0 0 12px; }
.banner { background: #fff4d6; border: 1px solid #e8c15a; padding: 8px 12px; border-radius: 4px; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b7a1b; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: right; }
th { background: #f4f6f8; } td.l, th.l { text-align: left; }
tr.chosen td { background: #eef6ff; font-weight: 600; }
code { font-size: 12px; background: #f4f4f4; padding: 0 3px; border-radius: 3px; word-break: break-all; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 10px; }
figure { margin: 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
.small { font-size: 12px; color: #555; }
ol.cols { columns: 3 300px; font-size: 12px; } ol.cols li { break-inside: avoid; }
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def section(id_: str, title: str, parts: list[str]) -> str:
    return f'<section id="{esc(id_)}"><h2>{esc(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,),
          row_class: list[str] | None = None) -> str:
    """`rows` hold HTML already escaped by the caller."""
    th = "".join(f'<th class="l">{h}</th>' if i in left else f"<th>{h}</th>" for i, h in enumerate(header))
    out = [f"<table><tr>{th}</tr>"]
    for k, row in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        tds = "".join(f'<td class="l">{c}</td>' if i in left else f"<td>{c}</td>" for i, c in enumerate(row))
        out.append(f"<tr{cls}>{tds}</tr>")
    return "".join(out) + "</table>"


def demo_banner(r: dict) -> list[str]:
    if not r.get("demo"):
        return []
    return ['<p class="banner"><b>Demo data</b>: 5 photos that ship with scikit-image and matplotlib. '
            "The figures show the pipeline works, not how accurate INT8 is; run on ImageNet for real "
            "numbers (<code>--dataset imagenet-val --data-dir DIR</code>).</p>"]


def notes(r: dict, extra: list[str] | None = None) -> str:
    """The Notes section: the report's notes (warnings in red), where the figures come from
    (model file, data, device, decode path), `extra` (HTML), the library versions."""
    from calib.report.header import origin_rows

    warnings = set(r.get("warnings") or [])
    items = [f'<span class="bad">warning</span>: {esc(n)}' if n in warnings else esc(n) for n in r.get("notes", [])]
    items += [f"{esc(what)}: <code>{esc(value)}</code>" for what, value in origin_rows(r)]
    items += extra or []
    versions = r.get("versions")
    if versions:
        items.append("versions: " + esc(", ".join(f"{k} {v}" for k, v in versions.items())))
    return section("notes", "Notes", ["<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"])


def histogram_section(figures: list[dict], intro: str) -> str:
    parts = [f"<p>{intro}</p>"]
    if not figures:
        parts.append("<p>No histogram available.</p>")
    else:
        parts.append('<div class="grid">' + "".join(
            f"<figure>{img(f['png'], 'histogram of |x| for ' + f['tensor'])}</figure>" for f in figures) + "</div>")
    return section("histograms", "Activation histograms and thresholds", parts)


def sqnr_worst(tensors: list[str], sqnr: dict[str, dict[str, float | None]], chosen: str, n: int = 10) -> str:
    order = {t: i for i, t in enumerate(tensors)}
    worst = sorted((t for t, v in sqnr[chosen].items() if v is not None), key=lambda t: sqnr[chosen][t])[:n]
    cals = list(sqnr)
    rows = [[str(order.get(t, "")), f"<code>{esc(t)}</code>"] + [db(sqnr[c].get(t)) for c in cals] for t in worst]
    header = ["#", "tensor"] + [esc(c) + (" (chosen)" if c == chosen else "") for c in cals]
    return table(header, rows, left=(1,))
