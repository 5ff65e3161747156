"""The report of `calib sensitivity`: sensitivity.json, .md, a bar plot (.png) and report.html."""

from __future__ import annotations

import json
from pathlib import Path

from calib.fsutil import atomic_write_bytes, atomic_write_text
from calib.report.format import db, images, pct
from calib.report.header import evaluation_text, note_lines, origin_rows
from calib.report.schema import as_json
from calib.report.html import demo_banner, esc, img, notes, page, section, table
from calib.report.plots import sensitivity_bars


def render_markdown(d: dict, top: int | None = None) -> str:
    d = as_json(d)
    rows = d["sensitivity"]["rows"]
    s = d["sensitivity"]
    lines = [f"# calib sensitivity: {d['model']} / {d['calibrator']} / {s['flavor']} Q/DQ", "",
             f"- measure: {s['measure']}",
             f"- {images(s['images'])} of {evaluation_text(d)}; FP32 top-1 {100 * s['fp32_top1']:.2f}%; every layer INT8: "
             f"logits SQNR {db(s['int8']['logits_sqnr_db'])}, agreement {100 * s['int8']['agreement']:.2f}%, "
             f"top-1 {100 * s['int8']['top1']:.2f}%",
             f"- check: every layer float reproduces FP32 (max |Δlogit| {s['all_float_max_abs_diff']:.2g})",
             f"- {len(rows)} layers ranked in {s['seconds']:.1f} s"]
    lines += [f"- {what}: `{value}`" for what, value in origin_rows(d)] + note_lines(d)
    lines += ["",
             "| rank | layer | op | logits SQNR (dB) | agreement | top-1 | worst image SQNR (dB) |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for i, r in enumerate(rows[:top] if top else rows, 1):
        lines.append(f"| {i} | `{r['layer']}` | {r['op_type']} | {db(r['logits_sqnr_db'])} | "
                     f"{100 * r['agreement']:.2f}% | {100 * r['top1']:.2f}% | {db(r['worst_image_sqnr_db'])} |")
    return "\n".join(lines) + "\n"


def render_html(d: dict) -> str:
    d = as_json(d)
    s = d["sensitivity"]
    body = [f"<h1>calib sensitivity: {esc(d['model'])} / {esc(d['calibrator'])}</h1>",
            f"<p class=\"meta\">{esc(s['flavor'])} Q/DQ; {images(s['images'])} of {esc(evaluation_text(d))}; "
            f"{len(s['rows'])} layers ranked in {s['seconds']:.1f} s</p>"]
    body += demo_banner(d)
    body.append(section("sensitivity", "Layers ranked by the damage they do", [
        f"<p>Measure: {esc(s['measure'])}. All layers INT8: logits SQNR {db(s['int8']['logits_sqnr_db'])} dB, "
        f"agreement {pct(s['int8']['agreement'])}, top-1 {pct(s['int8']['top1'])} (FP32 {pct(s['fp32_top1'])}). "
        f"Check: all layers float reproduces FP32 (max |Δlogit| {s['all_float_max_abs_diff']:.2g}).</p>",
        img(sensitivity_bars(s["rows"]), "sensitivity ranking"),
        table(["rank", "layer", "op", "logits SQNR (dB)", "agreement", "top-1", "worst image (dB)"],
              [[str(i), f"<code>{esc(x['layer'])}</code>", esc(x["op_type"]), db(x["logits_sqnr_db"]),
                pct(x["agreement"]), pct(x["top1"]), db(x["worst_image_sqnr_db"])]
               for i, x in enumerate(s["rows"], 1)], left=(1, 2))]))
    body.append(notes(d, [f"cache <code>{esc(d.get('cache', ''))}</code>"]))
    return page(f"calib sensitivity: {d['model']}", body)


def write_sensitivity_report(stage: Path, report) -> None:
    """sensitivity.json, .md, .png and report.html of a SensitivityReport (or its JSON dict)."""
    d = as_json(report)
    atomic_write_text(stage / "sensitivity.json", json.dumps(d, indent=2) + "\n")
    atomic_write_text(stage / "sensitivity.md", render_markdown(d))
    atomic_write_bytes(stage / "sensitivity.png", sensitivity_bars(d["sensitivity"]["rows"]))
    atomic_write_text(stage / "report.html", render_html(d))
