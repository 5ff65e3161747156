"""The report of `calib run` on a model that is not a classifier: report.json (`task`, `outputs`,
`metric`: docs/report.md) and report.md, and report.html holding the same tables. Every output is
judged against FP32 (its SQNR with a paired 95% interval over images, and its cosine similarity),
then the task metric (calib.metrics: mAP for detect, mIoU for segment, per-output fidelity for
generic), against the labels or against FP32's own outputs, as `metric.reference` says."""

from __future__ import annotations

import json
from pathlib import Path

from calib.fsutil import atomic_write_text
from calib.report.format import db, images
from calib.report.header import evaluation_text, note_lines, origin_rows
from calib.report.html import esc, notes, page, section, table
from calib.report.schema import as_json


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text   # no "-0.0000"


def _ci(ci, fmt=db) -> str:
    return "n/a" if not ci else f"{fmt(ci[0])} to {fmt(ci[1])}"


def output_rows(r: dict) -> list[list[str]]:
    return [[o["name"], "x".join(str(d) for d in o["shape"][1:]), db(o["sqnr_db"]), _ci(o.get("sqnr_db_ci95")),
             _num(o.get("cosine"))] for o in r["outputs"]]


def metric_line(m: dict) -> str:
    against = "the labels" if m.get("reference") == "labels" else "FP32's own outputs"
    return (f"{m['name']}: FP32 {_num(m.get('fp32'))}, INT8 {_num(m.get('int8'))}, drop {_num(m.get('drop'))} "
            f"(95% CI {_ci(m.get('drop_ci95'), _num)}), against {against}")


def render_markdown(r: dict) -> str:
    r = as_json(r)
    worst = min((o["sqnr_db"] for o in r["outputs"] if o["sqnr_db"] is not None), default=None)
    lines = [f"# calib run: {r['model']} ({r['task']}) / {r['calibrator']} / {r['qdq_flavor']} Q/DQ", "",
             *([f"**{r['verdict']['sentence']}**", ""] if r.get("verdict") else []),
             f"- {metric_line(r['metric'])}",
             *([f"- labels: `{r['labels']}`"] if r.get("labels") else []),
             f"- worst output SQNR {db(worst)} dB over {images(r['eval']['samples'])} ({r['eval']['skipped']} skipped) "
             f"of {evaluation_text(r)}",
             f"- calibration: {images(r['calibration']['samples'])}, cache `{r['calibration']['cache']}`"
             f"{' (reused)' if r['calibration']['reused'] else ''}"]
    lines += [f"- {what}: `{value}`" for what, value in origin_rows(r)] + note_lines(r)
    lines += ["", "| output | shape per image | SQNR | SQNR 95% CI | cosine |", "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in output_rows(r)]
    if r["eval"].get("skipped_files"):
        lines += ["", "Skipped (undecodable) images:"] + [f"- `{f}`" for f in r["eval"]["skipped_files"]]
    lines += fallback_lines(r.get("fallback"))
    kept = (r.get("placement") or {}).get("nodes") or []
    if kept:
        lines += ["", f"{len(kept)} nodes kept float on purpose (heads, --exclude, --exclude-op): "
                  + ", ".join(f"`{n['node']}` ({n['reason']})" for n in kept[:20])
                  + (" ..." if len(kept) > 20 else "")]
    return "\n".join(lines) + "\n"


def fallback_lines(fb: dict | None) -> list[str]:
    """The budget's section: the layers left float, the search-subset and held-out figures."""
    if not fb:
        return []
    s, f = fb["search"], fb.get("final") or {}
    layers = fb["float_layers"]
    shown = ", ".join(f"`{x}`" for x in layers[:10]) + (" ..." if len(layers) > 10 else "")
    return ["", f"## Fallback to the budget ({fb['budget_text']})", "",
            f"- {len(layers)} of {fb['layers']} layers left in float" + (f": {shown}" if layers else ""),
            f"- search subset ({images(s['images'])}): {s['metric']} drop all-INT8 {_num(s['int8']['drop'])}, "
            f"with fallback {_num(s['fallback']['drop'])}",
            f"- held-out subset ({images(f.get('images', 0))}): {f.get('metric')} drop {_num(f.get('drop'))}"
            f" ({'meets' if fb.get('final_met') else 'misses'} the budget)",
            f"- {fb['note']}"]


def render_html(r: dict) -> str:
    r = as_json(r)
    body = [f"<h1>calib run: {esc(r['model'])} ({esc(r['task'])})</h1>",
            *([f"<p><strong>{esc(r['verdict']['sentence'])}</strong></p>"] if r.get("verdict") else []),
            f"<p>{esc(metric_line(r['metric']))}</p>",
            *([f"<p>labels: <code>{esc(r['labels'])}</code></p>"] if r.get("labels") else []),
            notes(r),
            section("outputs", "Every output against FP32",
                    [table(["output", "shape per image", "SQNR", "SQNR 95% CI", "cosine"], output_rows(r))])]
    if r.get("fallback"):
        items = fallback_lines(r["fallback"])
        body.append(section("fallback", items[1].lstrip("# "), [f"<p>{esc(x.lstrip('- '))}</p>" for x in items[3:]]))
    return page(f"calib run: {r['model']}", body)


def write_task_report(out_dir: Path, report, html: bool = False) -> None:
    """report.json and report.md (and report.html when `html`) of a TaskReport."""
    r = as_json(report)
    atomic_write_text(out_dir / "report.json", json.dumps(r, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", render_markdown(r))
    if html:
        atomic_write_text(out_dir / "report.html", render_html(r))
