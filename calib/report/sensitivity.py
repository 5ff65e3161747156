"""The report of `calib sensitivity`: sensitivity.json, .md, a bar plot (.png) and report.html.

A classifier's report shows the logits SQNR, top-1 agreement and top-1 of each layer (and FP32's
top-1); a task model's (`"task"` in the sensitivity section: detect, segment, generic) says what it
was ranked by (`measure`), and shows each layer's lowest output SQNR, which output that is, and
every output's SQNR, with the task metric of the every-layer-INT8 model: top-1 and agreement are a
classifier's figures and are not printed for it."""

from __future__ import annotations

import json
from pathlib import Path

from calib.fsutil import atomic_write_bytes, atomic_write_text
from calib.report.format import db, images, pct
from calib.report.header import evaluation_text, note_lines, origin_rows
from calib.report.schema import as_json
from calib.report.html import demo_banner, esc, img, notes, page, section, table
from calib.report.plots import sensitivity_bars


def is_task(s: dict) -> bool:
    """The sensitivity section of a model that is not a classifier (ranked by its outputs' SQNR)."""
    return "task" in s


def output_names(s: dict) -> list[str]:
    """The outputs (and a detector's decoded views) each row has an SQNR for, in the rows' order."""
    names: list[str] = []
    for r in s["rows"]:
        names += [n for n in r.get("outputs_sqnr_db", {}) if n not in names]
    return names


def metric_text(m: dict) -> str:
    """The task metric of the every-layer-INT8 model, in words."""
    against = "the labels" if m["reference"] == "labels" else "FP32's own outputs"
    return (f"{m['name']} {m['int8']:.4f} against {against} (FP32 {m['fp32']:.4f}, drop {m['drop']:.4f})")


def render_markdown(d: dict, top: int | None = None) -> str:
    d = as_json(d)
    if is_task(d["sensitivity"]):
        return _task_markdown(d, top)
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


def _task_markdown(d: dict, top: int | None = None) -> str:
    s = d["sensitivity"]
    rows, i8, names = s["rows"], s["int8"], output_names(s)
    lines = [f"# calib sensitivity: {d['model']} / {d['calibrator']} / {s['flavor']} Q/DQ ({s['task']})", "",
             f"- measure: {s['measure']}",
             f"- {images(s['images'])} of {evaluation_text(d)}; every layer INT8: lowest output SQNR "
             f"{db(i8['sqnr_db'])} dB (`{i8['worst_output']}`), {metric_text(i8['metric'])}",
             f"- check: every layer float reproduces FP32 (max |Δoutput| {s['all_float_max_abs_diff']:.2g})",
             f"- {len(rows)} layers ranked in {s['seconds']:.1f} s"]
    lines += [f"- {what}: `{value}`" for what, value in origin_rows(d)] + note_lines(d)
    lines += ["",
              "| rank | layer | op | lowest SQNR (dB) | output | worst image (dB) | "
              + " | ".join(f"{n} (dB)" for n in names) + " |",
              "|---:|---|---|---:|---|---:|" + "---:|" * len(names)]
    for i, r in enumerate(rows[:top] if top else rows, 1):
        lines.append(f"| {i} | `{r['layer']}` | {r['op_type']} | {db(r['sqnr_db'])} | `{r['worst_output']}` | "
                     f"{db(r['worst_image_sqnr_db'])} | "
                     + " | ".join(db(r["outputs_sqnr_db"].get(n)) for n in names) + " |")
    return "\n".join(lines) + "\n"


def render_html(d: dict) -> str:
    d = as_json(d)
    s = d["sensitivity"]
    if is_task(s):
        return _task_html(d)
    body = [f"<h1>calib sensitivity: {esc(d['model'])} / {esc(d['calibrator'])}</h1>",
            f"<p class=\"meta\">{esc(s['flavor'])} Q/DQ; {images(s['images'])} of {esc(evaluation_text(d))}; "
            f"{len(s['rows'])} layers ranked in {s['seconds']:.1f} s</p>"]
    body += demo_banner(d)
    body.append(section("sensitivity", "Layers ranked by the damage they do", [
        f"<p>Measure: {esc(s['measure'])}. All layers INT8: logits SQNR {db(s['int8']['logits_sqnr_db'])} dB, "
        f"agreement {pct(s['int8']['agreement'])}, top-1 {pct(s['int8']['top1'])} (FP32 {pct(s['fp32_top1'])}). "
        f"Check: all layers float reproduces FP32 (max |Δlogit| {s['all_float_max_abs_diff']:.2g}).</p>",
        img(bars(s), "sensitivity ranking"),
        table(["rank", "layer", "op", "logits SQNR (dB)", "agreement", "top-1", "worst image (dB)"],
              [[str(i), f"<code>{esc(x['layer'])}</code>", esc(x["op_type"]), db(x["logits_sqnr_db"]),
                pct(x["agreement"]), pct(x["top1"]), db(x["worst_image_sqnr_db"])]
               for i, x in enumerate(s["rows"], 1)], left=(1, 2))]))
    body.append(notes(d, [f"cache <code>{esc(d.get('cache', ''))}</code>"]))
    return page(f"calib sensitivity: {d['model']}", body)


def _task_html(d: dict) -> str:
    s = d["sensitivity"]
    i8, names = s["int8"], output_names(s)
    body = [f"<h1>calib sensitivity: {esc(d['model'])} / {esc(d['calibrator'])}</h1>",
            f"<p class=\"meta\">{esc(s['task'])} model; {esc(s['flavor'])} Q/DQ; {images(s['images'])} of "
            f"{esc(evaluation_text(d))}; {len(s['rows'])} layers ranked in {s['seconds']:.1f} s</p>"]
    body += demo_banner(d)
    body.append(section("sensitivity", "Layers ranked by the damage they do", [
        f"<p>Measure: {esc(s['measure'])}. All layers INT8: lowest output SQNR {db(i8['sqnr_db'])} dB "
        f"(<code>{esc(i8['worst_output'])}</code>), {esc(metric_text(i8['metric']))}. "
        f"Check: all layers float reproduces FP32 (max |Δoutput| {s['all_float_max_abs_diff']:.2g}).</p>",
        img(bars(s), "sensitivity ranking"),
        table(["rank", "layer", "op", "lowest SQNR (dB)", "output", "worst image (dB)"]
              + [f"{esc(n)} (dB)" for n in names],
              [[str(i), f"<code>{esc(x['layer'])}</code>", esc(x["op_type"]), db(x["sqnr_db"]),
                f"<code>{esc(x['worst_output'])}</code>", db(x["worst_image_sqnr_db"])]
               + [db(x["outputs_sqnr_db"].get(n)) for n in names]
               for i, x in enumerate(s["rows"], 1)], left=(1, 2, 4))]))
    body.append(notes(d, [f"cache <code>{esc(d.get('cache', ''))}</code>"]))
    return page(f"calib sensitivity: {d['model']}", body)


def bars(s: dict) -> bytes:
    """The bar plot of a sensitivity section: a classifier's logits SQNR, a task model's lowest
    output SQNR."""
    if is_task(s):
        return sensitivity_bars(s["rows"], key="sqnr_db", label="lowest output SQNR")
    return sensitivity_bars(s["rows"])


def write_sensitivity_report(stage: Path, report) -> None:
    """sensitivity.json, .md, .png and report.html of a SensitivityReport (or its JSON dict)."""
    d = as_json(report)
    atomic_write_text(stage / "sensitivity.json", json.dumps(d, indent=2) + "\n")
    atomic_write_text(stage / "sensitivity.md", render_markdown(d))
    atomic_write_bytes(stage / "sensitivity.png", bars(d["sensitivity"]))
    atomic_write_text(stage / "report.html", render_html(d))
