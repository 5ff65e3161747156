"""The report of one `calib run`: report.json, report.md and report.html."""

from __future__ import annotations

import json
import math
from pathlib import Path

from calib.fsutil import atomic_write_text
from calib.report import fallback as fallback_report
from calib.report.format import db, images, pct, points
from calib.report.header import evaluation_text, note_lines, origin_rows
from calib.stats.verdict import distinct
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
    v = r.get("verdict")
    if v:
        lines += ["## Verdict", "", f"**{v['headline']}**: {v['reason']}.", ""]
        lines += [f"- {f['text']}" for f in v.get("figures", [])]
        lines += [f"- accuracy: {v['accuracy']['text']}"]
        if v.get("note"):
            lines.append(f"- note: {v['note']}")
        lines += ["", "## Accuracy", ""]
    lines += [
        "| | top-1 | top-5 |", "|---|---|---|",
        f"| FP32 | {pct(r['fp32']['top1'])} | {pct(r['fp32']['top5'])} |",
        f"| INT8 | {pct(r['int8']['top1'])} | {pct(r['int8']['top5'])} |", "",
        f"- top-1 drop (FP32 − INT8): **{points(r['top1_drop'])} points**" + _ci_points(r.get("top1_drop_ci95")),
        f"- top-1 agreement INT8 vs FP32: **{pct(r['agreement'])}**" + _ci_pct(r.get("agreement_ci95")),
        f"- evaluated on {images(ev['samples'])} ({ev['skipped']} skipped) of {evaluation_text(r)}"
        + (f"; {ev['overlap_text']}" if ev.get("overlap_text") else ""),
        f"- calibrated on {images(cal['samples'])} in {cal['seconds']:.1f} s"
        + (" (cache reused)" if cal["reused"] else ""),
        f"- cache: `{cal['cache']}`",
        f"- backend: {r['backend']}; FP32 model `{r['fp32_model']}`; INT8 model `{r['int8_model']}`",
    ]
    lines += [f"- {what}: `{value}`" for what, value in origin_rows(r)]
    p = r.get("paired")
    if p:
        lines.append(f"- images INT8 broke (FP32 right, INT8 wrong): {p['discordant']['a_only']}; fixed: "
                     f"{p['discordant']['b_only']} (exact McNemar p = {p['p_value']:.3g})")
    if r.get("logits_sqnr_db") is not None or r.get("logits_sqnr_db_ci95"):
        lines.append(f"- logits SQNR INT8 vs FP32: {db(r.get('logits_sqnr_db'))} dB"
                     + (f" (95% CI {db(r['logits_sqnr_db_ci95'][0])} to {db(r['logits_sqnr_db_ci95'][1])})"
                        if r.get("logits_sqnr_db_ci95") else ""))
    lines += _speed_lines(r)
    if "ort_kernels" in r:
        k = r["ort_kernels"]
        lines.append(f"- ONNX Runtime runs {k['QLinearConv']} convolutions as integer QLinearConv "
                     f"and {k['float_conv']} in float (after its graph optimizations)")
    lines += note_lines(r)
    if r.get("fallback"):
        lines.append(fallback_report.render_markdown(r["fallback"]).rstrip("\n"))
    lines += _class_lines(r.get("classes"))
    if ev.get("skipped_files"):
        lines += ["", "Skipped (undecodable) images:"] + [f"- `{f}`" for f in ev["skipped_files"]]
    return "\n".join(lines) + "\n"


def _ci_points(ci) -> str:
    return f" (95% CI {points(ci[0])} to {points(ci[1])})" if ci else ""


def _ci_pct(ci) -> str:
    return f" (95% CI {pct(ci[0])} to {pct(ci[1])})" if ci else ""


def speed_rows(r: dict) -> list[list[str]]:
    """[what, FP32, INT8] rows: latency, throughput, size."""
    rows = []
    for key, label in (("speed", r.get("speed", {}).get("backend", r.get("backend"))), ("speed_ort_cpu", "ort")):
        s = r.get(key)
        if s:
            rows.append([f"latency at batch 1 ({label}), ms", f"{s['fp32']['latency_ms_b1']:.2f}",
                         f"{s['int8']['latency_ms_b1']:.2f}"])
            rows.append([f"throughput at batch 32 ({label}), images/s", f"{s['fp32']['throughput_b32']:.1f}",
                         f"{s['int8']['throughput_b32']:.1f}"])
    if r.get("size_mb"):  # enough decimals to tell the sizes apart (0.1 and 0.1 MB would not)
        f, q = r["size_mb"]["fp32"], r["size_mb"]["int8"]
        rows.append(["model size, MB", *(distinct(f, q) or (f"{f:.1f}", f"{q:.1f}"))])
    return rows


def _speed_lines(r: dict) -> list[str]:
    rows = speed_rows(r)
    if not rows:
        return []
    return ["", "| | FP32 | INT8 |", "|---|---:|---:|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]


def _class_lines(c: dict | None) -> list[str]:
    if not c:
        return []
    lines = ["", f"Classes: {c['classes_gained']} gained and {c['classes_lost']} lost top-1 accuracy, "
                 f"{c['classes_unchanged']} unchanged, over {c['classes']} classes; INT8 broke "
                 f"{images(c['images_broken'])} and fixed {c['images_fixed']}."]
    if c["per_class"]:
        lines += ["", f"Classes with at least {c['min_images']} images whose accuracy changed:", "",
                  "| class | images | FP32 | INT8 | change (pts) | significant |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {x['class']} {x['name']} | {x['images']} | {pct(x['fp32_top1'])} | {pct(x['int8_top1'])} | "
                  f"{100 * x['change']:+.1f} | {'yes' if x['significant'] else 'no'} |" for x in c["per_class"]]
    else:
        lines.append(f"(No class has {c['min_images']} or more evaluation images: per-class changes would be "
                     "noise, only the totals are shown.)")
    return lines


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
            f"<p class=\"meta\">{esc(r['qdq_flavor'])} Q/DQ on {esc(r['backend'])} ({esc(r.get('device', 'cpu'))}); "
            f"evaluated on {esc(evaluation_text(r))}</p>"]
    body += demo_banner(r)
    v = r.get("verdict")
    if v:
        cls = {"ship_int8": "good", "ship_int8_with_float_layers": "good", "ship_fp32": "bad"}.get(v["action"], "")
        parts = [f'<p><span class="{cls}">{esc(v["headline"])}</span>: {esc(v["reason"])}.</p>',
                 "<ul>" + "".join(f"<li>{esc(f['text'])}</li>" for f in v.get("figures", []))
                 + f"<li>accuracy: {esc(v['accuracy']['text'])}</li>"
                 + (f"<li>{esc(v['note'])}</li>" if v.get("note") else "") + "</ul>"]
        body.append(section("verdict", "Verdict", parts))
    rows = [["FP32", pct(r["fp32"]["top1"]), pct(r["fp32"]["top5"]), "", ""],
            ["INT8", pct(r["int8"]["top1"]), pct(r["int8"]["top5"]), points(r["top1_drop"]),
             pct(r["agreement"])]]
    summary = [table(["model", "top-1", "top-5", "drop (pts)", "agreement"], rows),
               f"<p>Evaluated on {images(ev['samples'])} ({ev['skipped']} skipped) of {esc(evaluation_text(r))}; "
               f"{esc(ev.get('overlap_text', ''))}; calibration {cal['seconds']:.1f} s"
               f"{' (cache reused)' if cal['reused'] else ''}; cache <code>{esc(cal['cache'])}</code>; "
               f"INT8 model <code>{esc(r['int8_model'])}</code>.</p>"]
    if r.get("logits_sqnr_db_ci95"):  # over every evaluation image
        ci = r["logits_sqnr_db_ci95"]
        summary.append(f"<p>Logits SQNR against FP32: {db(r['logits_sqnr_db'])} dB (95% CI {db(ci[0])} to "
                       f"{db(ci[1])}) on the evaluation images ({images(ev['samples'])}).</p>")
    elif extras.get("logits_sqnr_db", math.nan) is not None and "logits_sqnr_db" in extras:
        summary.append(f"<p>Logits SQNR against FP32: {db(extras['logits_sqnr_db'])} dB "
                       f"(on {images(extras['sqnr_images'])}).</p>")
    if r.get("top1_drop_ci95"):
        p = r["paired"]
        summary.append(f"<p>95% intervals: top-1 drop {esc(_ci_points(r['top1_drop_ci95']).strip(' ()'))} points, "
                       f"agreement {esc(_ci_pct(r['agreement_ci95']).strip(' ()'))}. INT8 broke "
                       f"{images(p['discordant']['a_only'])} FP32 got right and fixed {p['discordant']['b_only']} "
                       f"(exact McNemar p = {p['p_value']:.3g}).</p>")
    if ev.get("skipped_files"):
        summary.append("<p>Skipped (undecodable) images: "
                       + ", ".join(f"<code>{esc(f)}</code>" for f in ev["skipped_files"]) + ".</p>")
    body.append(section("summary", "Accuracy", summary))
    if speed_rows(r):
        body.append(section("speed", "Speed and size", [
            table(["", "FP32", "INT8"], [[esc(a), b, c] for a, b, c in speed_rows(r)]),
            "<p class=\"small\">Median latency of one image and throughput at batch 32 on random input, on the "
            "backend of this run; sizes of the ONNX files.</p>"]))
    c = r.get("classes")
    if c:
        cparts = [f"<p>{c['classes_gained']} classes gained and {c['classes_lost']} lost top-1 accuracy, "
                  f"{c['classes_unchanged']} unchanged, over {c['classes']} classes; INT8 broke "
                  f"{images(c['images_broken'])} and fixed {c['images_fixed']}.</p>"]
        if c["per_class"]:
            cparts.append(table(["class", "images", "FP32", "INT8", "change (pts)", "significant"],
                                [[esc(f"{x['class']} {x['name']}"), str(x["images"]), pct(x["fp32_top1"]),
                                  pct(x["int8_top1"]), f"{100 * x['change']:+.1f}", "yes" if x["significant"] else "no"]
                                 for x in c["per_class"]]))
        else:
            cparts.append(f"<p>No class has {c['min_images']} or more evaluation images: per-class changes would "
                          "be noise, only the totals are shown.</p>")
        body.append(section("classes", "Classes", cparts))
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
            f"simulated Q/DQ) on {images(extras['sqnr_images'])} of the evaluation; values above 80 dB (tensors "
            f"left in float, float round-off) are drawn at the top.</p>",
            img(sqnr_lines(extras["sqnr_tensors"], series, r["calibrator"]), "per-tensor SQNR"),
            sqnr_worst(extras["sqnr_tensors"], series, r["calibrator"])]))
    body.append(notes(r))
    return page(f"calib run: {r['model']}", body)
