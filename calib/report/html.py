"""Self-contained HTML reports: inline CSS, figures embedded as base64 PNG, no script, no
network access at view time. Written atomically (in a staged output folder)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from calib.fsutil import atomic_write_text

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


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def db(x: float | None) -> str:
    return "∞" if x is None else f"{x:.1f}"


def images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


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


def _demo_banner(r: dict) -> list[str]:
    if not r.get("demo"):
        return []
    return ['<p class="banner"><b>Demo data</b>: 5 photos that ship with scikit-image and matplotlib. '
            "The figures show the pipeline works, not how accurate INT8 is; run on ImageNet for real "
            "numbers (<code>--dataset imagenet-val --data-dir DIR</code>).</p>"]


def _notes(r: dict, extra: list[str] | None = None) -> str:
    items = [esc(n) for n in r.get("notes", [])] + (extra or [])
    versions = r.get("versions")
    if versions:
        items.append("versions: " + esc(", ".join(f"{k} {v}" for k, v in versions.items())))
    return section("notes", "Notes", ["<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"])


def _histogram_section(figures: list[dict], intro: str) -> str:
    parts = [f"<p>{intro}</p>"]
    if not figures:
        parts.append("<p>No histogram available.</p>")
    else:
        parts.append('<div class="grid">' + "".join(
            f"<figure>{img(f['png'], 'histogram of |x| for ' + f['tensor'])}</figure>" for f in figures) + "</div>")
    return section("histograms", "Activation histograms and thresholds", parts)


def _sqnr_worst(tensors: list[str], sqnr: dict[str, dict[str, float | None]], chosen: str, n: int = 10) -> str:
    order = {t: i for i, t in enumerate(tensors)}
    worst = sorted((t for t, v in sqnr[chosen].items() if v is not None), key=lambda t: sqnr[chosen][t])[:n]
    cals = list(sqnr)
    rows = [[str(order.get(t, "")), f"<code>{esc(t)}</code>"] + [db(sqnr[c].get(t)) for c in cals] for t in worst]
    header = ["#", "tensor"] + [esc(c) + (" (chosen)" if c == chosen else "") for c in cals]
    return table(header, rows, left=(1,))


# ----------------------------------------------------------------------------- compare
def render_compare_html(r: dict, figures: list[dict]) -> str:
    from calib.compare import calibration_sentence
    from calib.report.plots import accuracy_bars, colors, sqnr_lines

    names, chosen, res = r["calibrators"], r["chosen"], r["results"]
    palette = colors(names)
    body = [f"<h1>calib compare: {esc(r['model'])}</h1>",
            f"<p class=\"meta\">{esc(r['qdq_flavor'])} Q/DQ on {esc(r['backend'])}; calibration on "
            f"{r['calibration']['samples']} images, evaluation on {r['eval']['samples']} other images of "
            f"{esc(r['dataset'])}; FP32 top-1 <b>{pct(r['fp32']['top1'])}</b>, top-5 {pct(r['fp32']['top5'])}</p>"]
    body += _demo_banner(r)
    rows, classes = [], []
    for n in names:
        x = res[n]
        drop_cls = "bad" if x["top1_drop"] > 0.01 else ""
        rows.append([f'<span style="color:{palette[n]}">■</span> {esc(n)}' + (" (chosen)" if n == chosen else ""),
                     pct(x["top1"]), pct(x["top5"]), f'<span class="{drop_cls}">{100 * x["top1_drop"]:.2f}</span>',
                     pct(x["agreement"]), db(x["logits_sqnr_db"]),
                     f"{x['calibration_seconds']:.1f}" + (" (cache reused)" if x["reused"] else "")])
        classes.append("chosen" if n == chosen else "")
    summary = [table(["calibrator", "top-1", "top-5", "drop (pts)", "agreement", "logits SQNR (dB)",
                      "calibration (s)"], rows, row_class=classes),
               f"<p>Chosen for the sections below: <b>{esc(chosen)}</b> ({esc(r['chosen_reason'])}). "
               f"drop = FP32 top-1 − INT8 top-1; agreement = share of images where INT8 and FP32 predict "
               f"the same class. {esc(calibration_sentence(r))}</p>",
               img(accuracy_bars(names, [res[n]["top1"] for n in names], [res[n]["agreement"] for n in names],
                                 r["fp32"]["top1"], chosen), "top-1 and agreement per calibrator")]
    body.append(section("summary", "Accuracy per calibrator", summary))
    h = r["histograms"]
    intro = (f"Histogram of |x| (log count) over {h['images']} calibration images for the first and last "
             f"quantized tensors and those where the calibrators disagree most; vertical lines: the "
             f"threshold (amax) each calibrator picked — values beyond it are clipped.")
    if h.get("note"):
        intro += " Histograms " + esc(h["note"]) + "."
    body.append(_histogram_section(figures, intro))
    s = r["sqnr"]
    body.append(section("sqnr", "Per-layer SQNR against FP32", [
        f"<p>SQNR (dB) of every quantized tensor on {s['images']} evaluation images: {esc(s['what'])}. "
        "Each point is the tensor a layer reads (its DequantizeLinear output). Higher is better; "
        "values above 80 dB (float round-off) and ∞ (no error) are drawn at the top.</p>",
        img(sqnr_lines(s["tensors"], s["db"], chosen, palette), "per-tensor SQNR"),
        f"<p>The 10 lowest-SQNR tensors of <b>{esc(chosen)}</b>:</p>",
        _sqnr_worst(s["tensors"], s["db"], chosen)]))
    cls_rows = [[f"{c['class']} {esc(c['name'])}", str(c["images"]), pct(c["fp32_top1"]), pct(c["int8_top1"]),
                 f'<span class="{"bad" if c["change"] < 0 else "good"}">{100 * c["change"]:+.1f}</span>']
                for c in r["classes"]]
    parts = [f"<p>{esc(chosen)}: {images(r['flips']['broken'])} that FP32 got right and INT8 gets wrong, "
             f"{r['flips']['fixed']} the other way round. Per class: top-1 accuracy of FP32 and INT8 on the "
             f"evaluation images of that class (largest changes first).</p>"]
    parts.append(table(["class", "images", "FP32 top-1", "INT8 top-1", "change (pts)"], cls_rows)
                 if cls_rows else "<p>No class changed its top-1 accuracy.</p>")
    body.append(section("classes", "Classes whose accuracy changed most", parts))
    files = [f"<code>{esc(Path(res[n]['int8_model']).name)}</code> (cache <code>{esc(res[n]['cache'])}</code>)"
             for n in names]
    body.append(_notes(r, [f"INT8 models: {', '.join(files)}", f"total time {r.get('seconds')} s"]))
    return page(f"calib compare: {r['model']}", body)


def write_compare_html(stage: Path, report: dict, figures: list[dict]) -> None:
    atomic_write_text(Path(stage) / "report.html", render_compare_html(report, figures))


# ----------------------------------------------------------------------------- calib run
def _fallback_section(fb: dict) -> str:
    from calib.fallback import SLOWER_THAN_FP32, budget_text, slower_than_fp32

    s, f = fb["search"], fb.get("final")
    met = fb.get("final_met")
    parts = [f"<p>Budget: {esc(budget_text(fb['budget']))}. The search ran on <b>{s['images']}</b> evaluation "
             f"images; the final figures come from the <b>{fb['final_images']}</b> held-out images it never saw "
             f"(the report's top-1/agreement above are those).</p>"]
    rows = [["all INT8 (search set)", pct(s["int8"]["drop"]), pct(s["int8"]["agreement"]), "0"],
            ["fallback (search set)", pct(s["fallback"]["drop"]), pct(s["fallback"]["agreement"]),
             str(len(fb["float_layers"]))]]
    if f:
        rows.append(["fallback (held-out)", pct(f["drop"]), pct(f["agreement"]), str(len(fb["float_layers"]))])
    parts.append(table(["model", "top-1 drop", "agreement", "layers in float"], rows))
    if met is not None:
        parts.append(f'<p class="{"good" if met else "bad"}">Held-out set: budget '
                     f'{"met" if met else "NOT met (the search set over-fitted; use more evaluation images)"}.</p>')
    t = fb.get("throughput")
    if t:
        parts.append(f"<p>INT8 throughput (ONNX Runtime CPU, batch {t['batch_size']}): all INT8 "
                     f"{t['int8']:.1f} img/s, with fallback {t['fallback']:.1f} img/s "
                     f"(<b>{100 * t['cost']:.1f}%</b> slower); FP32 {t['fp32']:.1f} img/s.</p>")
        if slower_than_fp32(t):
            parts.append(f'<p class="bad">{esc(SLOWER_THAN_FP32)}.</p>')
    if fb["float_layers"]:
        parts.append(f"<p>{len(fb['float_layers'])} of {fb['layers']} layers left in float (most damaging "
                     f"first):</p><ol class=\"cols\">" + "".join(
                         f"<li><code>{esc(x)}</code></li>" for x in fb["float_layers"]) + "</ol>")
    else:
        parts.append("<p>The all-INT8 model already meets the budget: no layer left in float.</p>")
    if fb["ranking_images"]:
        parts.append(f"<p class=\"small\">Search: {esc(fb['strategy'])}; {fb['evaluations']} candidate models "
                     f"evaluated; ranking: {esc(fb['measure'])} on {fb['ranking_images']} search images.</p>")
    return section("fallback", "Fallback to the accuracy budget", parts)


def render_run_html(r: dict, extras: dict | None = None) -> str:
    extras = extras or {}
    cal, ev = r["calibration"], r["eval"]
    body = [f"<h1>calib run: {esc(r['model'])} / {esc(r['calibrator'])}</h1>",
            f"<p class=\"meta\">{esc(r['qdq_flavor'])} Q/DQ on {esc(r['backend'])}; {esc(r['dataset'])}</p>"]
    body += _demo_banner(r)
    rows = [["FP32", pct(r["fp32"]["top1"]), pct(r["fp32"]["top5"]), "", ""],
            ["INT8", pct(r["int8"]["top1"]), pct(r["int8"]["top5"]), f"{100 * r['top1_drop']:.2f}",
             pct(r["agreement"])]]
    summary = [table(["model", "top-1", "top-5", "drop (pts)", "agreement"], rows),
               f"<p>Evaluated on {ev['samples']} images ({ev['skipped']} skipped), disjoint from the "
               f"{cal['samples']} calibration images; calibration {cal['seconds']:.1f} s"
               f"{' (cache reused)' if cal['reused'] else ''}; cache <code>{esc(cal['cache'])}</code>; "
               f"INT8 model <code>{esc(r['int8_model'])}</code>.</p>"]
    if extras.get("logits_sqnr_db", math.nan) is not None and "logits_sqnr_db" in extras:
        summary.append(f"<p>Logits SQNR against FP32: {db(extras['logits_sqnr_db'])} dB "
                       f"(on {extras['sqnr_images']} images).</p>")
    body.append(section("summary", "Accuracy", summary))
    if r.get("fallback"):
        body.append(_fallback_section(r["fallback"]))
    if "histograms" in extras:
        body.append(_histogram_section(
            extras["histograms"],
            "Histogram of |x| (log count) over the calibration images for the first and last quantized "
            f"tensors and those {esc(r['calibrator'])} clips hardest; vertical line: the threshold (amax) "
            "it picked — values beyond it are clipped."
            + (f" Histograms {esc(extras['histogram_note'])}." if extras.get("histogram_note") else "")))
    if "sqnr" in extras:
        from calib.report.plots import sqnr_lines

        series = {r["calibrator"]: extras["sqnr"]}
        body.append(section("sqnr", "Per-layer SQNR against FP32", [
            f"<p>SQNR (dB) of every quantized tensor (its DequantizeLinear output vs the FP32 tensor, "
            f"simulated Q/DQ) on {extras['sqnr_images']} evaluation images; values above 80 dB (tensors "
            f"left in float, float round-off) are drawn at the top.</p>",
            img(sqnr_lines(extras["sqnr_tensors"], series, r["calibrator"]), "per-tensor SQNR"),
            _sqnr_worst(extras["sqnr_tensors"], series, r["calibrator"])]))
    body.append(_notes(r))
    return page(f"calib run: {r['model']}", body)


def write_run_html(stage_dir: Path, report_dict: dict, extras: dict | None = None) -> None:
    """report.html of `calib run` beside report.json: `report_dict` is build_report()'s dict
    (with "fallback" when a budget was given), `extras` is calib.compare.run_html_extras()'s
    dict (histograms + per-tensor SQNR) or None for the tables alone."""
    atomic_write_text(Path(stage_dir) / "report.html", render_run_html(report_dict, extras))


# ----------------------------------------------------------------------------- sensitivity
def render_sensitivity_html(d: dict) -> str:
    from calib.report.plots import sensitivity_bars

    s = d["sensitivity"]
    body = [f"<h1>calib sensitivity: {esc(d['model'])} / {esc(d['calibrator'])}</h1>",
            f"<p class=\"meta\">{esc(s['flavor'])} Q/DQ; {s['images']} evaluation images of {esc(d['dataset'])}; "
            f"{len(s['rows'])} layers ranked in {s['seconds']:.1f} s</p>"]
    body += _demo_banner(d)
    body.append(section("sensitivity", "Layers ranked by the damage they do", [
        f"<p>Measure: {esc(s['measure'])}. All layers INT8: logits SQNR {db(s['int8']['logits_sqnr_db'])} dB, "
        f"agreement {pct(s['int8']['agreement'])}, top-1 {pct(s['int8']['top1'])} (FP32 {pct(s['fp32_top1'])}). "
        f"Check: all layers float reproduces FP32 (max |Δlogit| {s['all_float_max_abs_diff']:.2g}).</p>",
        img(sensitivity_bars(s["rows"]), "sensitivity ranking"),
        table(["rank", "layer", "op", "logits SQNR (dB)", "agreement", "top-1", "worst image (dB)"],
              [[str(i), f"<code>{esc(x['layer'])}</code>", esc(x["op_type"]), db(x["logits_sqnr_db"]),
                pct(x["agreement"]), pct(x["top1"]), db(x["worst_image_sqnr_db"])]
               for i, x in enumerate(s["rows"], 1)], left=(1, 2))]))
    body.append(_notes(d, [f"cache <code>{esc(d.get('cache', ''))}</code>"]))
    return page(f"calib sensitivity: {d['model']}", body)


def write_sensitivity_html(stage: Path, d: dict) -> None:
    atomic_write_text(Path(stage) / "report.html", render_sensitivity_html(d))
