"""The report of one `calib run`: report.json, report.md and report.html."""

from __future__ import annotations

import json
import math
from pathlib import Path

from calib.fsutil import atomic_write_text
from calib.report import fallback as fallback_report
from calib.report.format import db, pct
from calib.report.schema import as_json
from calib.report.html import demo_banner, esc, histogram_section, img, notes, page, section, sqnr_worst, table
from calib.report.plots import sqnr_lines


def render_markdown(r: dict) -> str:
    r = as_json(r)
    cal, ev = r["calibration"], r["eval"]
    lines = [f"# calib run: {r['model']} / {r['calibrator']} / {r['qdq_flavor']} Q/DQ", ""]
    if r.get("demo"):
        lines += ["> **This is a demo** on 5 photos that ship with scikit-image and matplotlib: the numbers",
                  "> below say the pipeline works, not how accurate INT8 is. For real figures run on ImageNet:",
                  "> `calib run --dataset imagenet-val --data-dir ~/data/imagenet/val --samples 500`",
                  "> (how to get the data: `datasets/imagenet-val.md`).", ""]
    lines += [
        "| | top-1 | top-5 |", "|---|---|---|",
        f"| FP32 | {pct(r['fp32']['top1'])} | {pct(r['fp32']['top5'])} |",
        f"| INT8 | {pct(r['int8']['top1'])} | {pct(r['int8']['top5'])} |", "",
        f"- top-1 drop (FP32 − INT8): **{100 * r['top1_drop']:.2f} points**",
        f"- top-1 agreement INT8 vs FP32: **{pct(r['agreement'])}**",
        f"- evaluated on {ev['samples']} images ({ev['skipped']} skipped), {r['dataset']}",
        f"- calibrated on {cal['samples']} images in {cal['seconds']:.1f} s"
        + (" (cache reused)" if cal["reused"] else ""),
        f"- cache: `{cal['cache']}`",
        f"- backend: {r['backend']}; FP32 model `{r['fp32_model']}`; INT8 model `{r['int8_model']}`",
    ]
    if "ort_kernels" in r:
        k = r["ort_kernels"]
        lines.append(f"- ONNX Runtime runs {k['QLinearConv']} convolutions as integer QLinearConv "
                     f"and {k['float_conv']} in float (after its graph optimizations)")
    for note in r.get("notes", []):
        lines.append(f"- note: {note}")
    if r.get("fallback"):
        lines.append(fallback_report.render_markdown(r["fallback"]).rstrip("\n"))
    if ev.get("skipped_files"):
        lines += ["", "Skipped (undecodable) images:"] + [f"- `{f}`" for f in ev["skipped_files"]]
    return "\n".join(lines) + "\n"


def write_run_report(out_dir: Path, report, figures: dict | None = None, html: bool = False) -> None:
    """report.json and report.md (and report.html when `html`) of a RunReport (or its JSON
    dict); `figures` are the histogram and per-tensor SQNR figures of the HTML."""
    r = as_json(report)
    atomic_write_text(out_dir / "report.json", json.dumps(r, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", render_markdown(r))
    if html:
        atomic_write_text(out_dir / "report.html", render_html(r, figures))


def render_html(r: dict, extras: dict | None = None) -> str:
    r = as_json(r)
    extras = extras or {}
    cal, ev = r["calibration"], r["eval"]
    body = [f"<h1>calib run: {esc(r['model'])} / {esc(r['calibrator'])}</h1>",
            f"<p class=\"meta\">{esc(r['qdq_flavor'])} Q/DQ on {esc(r['backend'])}; {esc(r['dataset'])}</p>"]
    body += demo_banner(r)
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
        body.append(fallback_report.render_html(r["fallback"]))
    if "histograms" in extras:
        body.append(histogram_section(
            extras["histograms"],
            "Histogram of |x| (log count) over the calibration images for the first and last quantized "
            f"tensors and those {esc(r['calibrator'])} clips hardest; vertical line: the threshold (amax) "
            "it picked — values beyond it are clipped."
            + (f" Histograms {esc(extras['histogram_note'])}." if extras.get("histogram_note") else "")))
    if "sqnr" in extras:
        series = {r["calibrator"]: extras["sqnr"]}
        body.append(section("sqnr", "Per-layer SQNR against FP32", [
            f"<p>SQNR (dB) of every quantized tensor (its DequantizeLinear output vs the FP32 tensor, "
            f"simulated Q/DQ) on {extras['sqnr_images']} evaluation images; values above 80 dB (tensors "
            f"left in float, float round-off) are drawn at the top.</p>",
            img(sqnr_lines(extras["sqnr_tensors"], series, r["calibrator"]), "per-tensor SQNR"),
            sqnr_worst(extras["sqnr_tensors"], series, r["calibrator"])]))
    body.append(notes(r))
    return page(f"calib run: {r['model']}", body)
