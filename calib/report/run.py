"""The report of one `calib run`: report.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path

from calib.fsutil import atomic_write_text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def render_markdown(r: dict) -> str:
    cal, ev = r["calibration"], r["eval"]
    lines = [f"# calib run: {r['model']} / {r['calibrator']} / {r['qdq_flavor']} Q/DQ", ""]
    if r.get("demo"):
        lines += ["> **This is a demo** on 5 photos that ship with scikit-image and matplotlib: the numbers",
                  "> below say the pipeline works, not how accurate INT8 is. For real figures run on ImageNet:",
                  "> `calib run --dataset imagenet-val --data-dir ~/data/imagenet/val --samples 500`",
                  "> (how to get the data: `datasets/imagenet-val.md`).", ""]
    lines += [
        "| | top-1 | top-5 |", "|---|---|---|",
        f"| FP32 | {_pct(r['fp32']['top1'])} | {_pct(r['fp32']['top5'])} |",
        f"| INT8 | {_pct(r['int8']['top1'])} | {_pct(r['int8']['top5'])} |", "",
        f"- top-1 drop (FP32 − INT8): **{100 * r['top1_drop']:.2f} points**",
        f"- top-1 agreement INT8 vs FP32: **{_pct(r['agreement'])}**",
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
        from calib.fallback import render_markdown as fallback_markdown

        lines.append(fallback_markdown(r["fallback"]).rstrip("\n"))
    if ev.get("skipped_files"):
        lines += ["", "Skipped (undecodable) images:"] + [f"- `{f}`" for f in ev["skipped_files"]]
    return "\n".join(lines) + "\n"


def write_run_report(out_dir: Path, report: dict) -> None:
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", render_markdown(report))
