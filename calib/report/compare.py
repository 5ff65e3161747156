"""The report of `calib compare`: compare.json, compare.md and a self-contained report.html
(accuracy per calibrator, histograms with each calibrator's threshold, per-layer SQNR, the classes
that changed most)."""

from __future__ import annotations

import json
from pathlib import Path

from calib.fsutil import atomic_write_text
from calib.report.format import db, images, number, pct, points
from calib.report.header import evaluation_text, note_lines, origin_rows
from calib.report.schema import as_json
from calib.report.html import demo_banner, esc, histogram_section, img, notes, page, section, sqnr_worst, table
from calib.report.plots import accuracy_bars, colors, sqnr_lines


def calibration_sentence(r: dict) -> str:
    c = r["calibration"]
    if not c["fresh"]:
        return ("Every cache was reused: no calibration pass in this run (the calibration seconds are "
                "those recorded when each cache was made).")
    return f"{c['note']}. Shared pass: {c['shared_pass_seconds']:.1f} s for {', '.join(c['fresh'])}."


def _ci(ci, scale: float = 100.0, unit: str = "") -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"{number(scale * ci[0], 1)} to {number(scale * ci[1], 1)}{unit}"


def no_class_rows(r: dict) -> str:
    """Why the per-class table is empty: too few images per class, or really no change."""
    summary = r.get("class_summary") or {}
    if summary.get("classes") and not summary.get("classes_with_min_images"):
        return (f"No class has {summary['min_images']} or more evaluation images: per-class changes would be "
                f"noise. Over all {summary['classes']} classes, {summary['classes_gained']} gained and "
                f"{summary['classes_lost']} lost top-1 accuracy.")
    return "No class with enough images changed its top-1 accuracy."


def ranking_rows(r: dict) -> list[list[str]]:
    """[rank, calibrator, logits SQNR (CI), agreement (CI), drop (CI), significantly better than]."""
    rows = []
    for i, x in enumerate(r.get("ranking") or [], 1):
        better = sorted(set(x["sqnr_better_than"]) | set(x["agreement_better_than"]))
        rows.append([str(i), x["name"],
                     f"{db(x['logits_sqnr_db'])} ({_ci(x['logits_sqnr_db_ci95'], 1.0)})",
                     f"{pct(x['agreement'])} ({_ci(x['agreement_ci95'], unit='%')})",
                     f"{points(x['top1_drop'])} ({_ci(x['top1_drop_ci95'])})",
                     ", ".join(better) or "none"])
    return rows


def ranking_lines(r: dict) -> list[str]:
    rows = ranking_rows(r)
    if not rows:
        return []
    return (["", f"Ranked by logits SQNR on the evaluation images ({images(r['eval']['samples'])}), with 95% intervals "
                 "(SQNR: paired bootstrap; agreement: exact; drop: Tango's paired interval). A calibrator is "
                 "significantly better than another only where the paired difference excludes zero; the rest "
                 "of the order is chance at this number of images.", "",
             "| rank | calibrator | logits SQNR dB (95% CI) | agreement (95% CI) | drop pts (95% CI) | "
             "significantly better than |", "|---:|---|---:|---:|---:|---|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def render_markdown(r: dict) -> str:
    r = as_json(r)
    lines = [f"# calib compare: {r['model']} / {r['qdq_flavor']} Q/DQ", ""]
    if r.get("demo"):
        lines += ["> **Demo data**: 5 embedded photos; the figures say the pipeline works, not how accurate "
                  "INT8 is.", ""]
    lines += [f"FP32: top-1 {pct(r['fp32']['top1'])}, top-5 {pct(r['fp32']['top5'])} on "
              f"{images(r['eval']['samples'])} of {evaluation_text(r)}; "
              + r["eval"].get("overlap_text", "calibration on " + images(r["calibration"]["samples"])) + ".", "",
              "| calibrator | top-1 | top-5 | drop (pts) | agreement | logits SQNR (dB) | calibration (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for n in r["calibrators"]:
        x = r["results"][n]
        mark = " **(chosen)**" if n == r["chosen"] else ""
        sq = db(x.get("eval_logits_sqnr_db", x["logits_sqnr_db"]))
        lines.append(f"| {n}{mark} | {pct(x['top1'])} | {pct(x['top5'])} | {points(x['top1_drop'])} | "
                     f"{pct(x['agreement'])} | {sq} | {x['calibration_seconds']:.1f}"
                     f"{' (cache reused)' if x['reused'] else ''} |")
    lines += ranking_lines(r)
    lines += ["", f"- chosen: **{r['chosen']}** ({r['chosen_reason']})",
              f"- {calibration_sentence(r)}",
              f"- per-tensor SQNR on {images(r['sqnr']['images'])} of the evaluation: {r['sqnr']['what']}"]
    lines += [f"- {what}: `{value}`" for what, value in origin_rows(r)]
    worst = sorted(((v, t) for t, v in r["sqnr"]["db"][r["chosen"]].items() if v is not None))[:5]
    if worst:
        lines.append("- lowest SQNR tensors (" + r["chosen"] + "): "
                     + ", ".join(f"`{t}` {v:.1f} dB" for v, t in worst))
    if not r["classes"]:
        lines += ["", no_class_rows(r)]
    else:
        lines += ["", f"Classes whose top-1 accuracy changed most ({r['chosen']}; "
                      f"images FP32 got right and INT8 gets wrong: {r['flips']['broken']}, the other way: "
                      f"{r['flips']['fixed']}):", "",
                  "| class | images | FP32 | INT8 | change |", "|---|---:|---:|---:|---:|"]
        for c in r["classes"]:
            lines.append(f"| {c['class']} {c['name']} | {c['images']} | {pct(c['fp32_top1'])} | "
                         f"{pct(c['int8_top1'])} | {100 * c['change']:+.1f} pts |")
    lines += note_lines(r)
    lines += ["", "Plots: `report.html`."]
    return "\n".join(lines) + "\n"


def render_html(r: dict, figures: list[dict]) -> str:
    r = as_json(r)
    names, chosen, res = r["calibrators"], r["chosen"], r["results"]
    palette = colors(names)
    body = [f"<h1>calib compare: {esc(r['model'])}</h1>",
            f"<p class=\"meta\">{esc(r['qdq_flavor'])} Q/DQ on {esc(r['backend'])} ({esc(r.get('device', 'cpu'))}); "
            f"calibration on {images(r['calibration']['samples'])}, evaluation on {images(r['eval']['samples'])} of "
            f"{esc(evaluation_text(r))} ({esc(r['eval'].get('overlap_text', ''))}); FP32 top-1 <b>{pct(r['fp32']['top1'])}</b>, top-5 {pct(r['fp32']['top5'])}</p>"]
    body += demo_banner(r)
    rows, classes = [], []
    for n in names:
        x = res[n]
        drop_cls = "bad" if x["top1_drop"] > 0.01 else ""
        rows.append([f'<span style="color:{palette[n]}">■</span> {esc(n)}' + (" (chosen)" if n == chosen else ""),
                     pct(x["top1"]), pct(x["top5"]), f'<span class="{drop_cls}">{points(x["top1_drop"])}</span>',
                     pct(x["agreement"]), db(x.get("eval_logits_sqnr_db", x["logits_sqnr_db"])),
                     f"{x['calibration_seconds']:.1f}" + (" (cache reused)" if x["reused"] else "")])
        classes.append("chosen" if n == chosen else "")
    summary = [table(["calibrator", "top-1", "top-5", "drop (pts)", "agreement", "logits SQNR (dB)",
                      "calibration (s)"], rows, row_class=classes),
               f"<p>Chosen for the sections below: <b>{esc(chosen)}</b> ({esc(r['chosen_reason'])}). "
               f"drop = FP32 top-1 − INT8 top-1; agreement = share of images where INT8 and FP32 predict "
               f"the same class. {esc(calibration_sentence(r))}</p>",
               img(accuracy_bars(names, [res[n]["top1"] for n in names], [res[n]["agreement"] for n in names],
                                 r["fp32"]["top1"], chosen), "top-1 and agreement per calibrator")]
    if ranking_rows(r):
        summary.append(f"<p>Ranked by logits SQNR on the evaluation images ({images(r['eval']['samples'])}), with 95% "
                       "intervals. A calibrator is significantly better than another only where the paired "
                       "difference excludes zero; the rest of the order is chance at this number of images.</p>")
        summary.append(table(["rank", "calibrator", "logits SQNR dB (95% CI)", "agreement (95% CI)",
                              "drop pts (95% CI)", "significantly better than"],
                             [[esc(c) for c in row] for row in ranking_rows(r)], left=(1, 5)))
    body.append(section("summary", "Accuracy per calibrator", summary))
    h = r["histograms"]
    intro = (f"Histogram of |x| (log count) over {images(h['images'])} of the calibration for the first and last "
             f"quantized tensors and those where the calibrators disagree most; vertical lines: the "
             f"threshold (amax) each calibrator picked — values beyond it are clipped.")
    if h.get("note"):
        intro += " Histograms " + esc(h["note"]) + "."
    body.append(histogram_section(figures, intro))
    s = r["sqnr"]
    body.append(section("sqnr", "Per-layer SQNR against FP32", [
        f"<p>SQNR (dB) of every quantized tensor on {images(s['images'])} of the evaluation: {esc(s['what'])}. "
        "Each point is the tensor a layer reads (its DequantizeLinear output). Higher is better; "
        "values above 80 dB (float round-off) and ∞ (no error) are drawn at the top.</p>",
        img(sqnr_lines(s["tensors"], s["db"], chosen, palette), "per-tensor SQNR"),
        f"<p>The 10 lowest-SQNR tensors of <b>{esc(chosen)}</b>:</p>",
        sqnr_worst(s["tensors"], s["db"], chosen)]))
    cls_rows = [[f"{c['class']} {esc(c['name'])}", str(c["images"]), pct(c["fp32_top1"]), pct(c["int8_top1"]),
                 f'<span class="{"bad" if c["change"] < 0 else "good"}">{100 * c["change"]:+.1f}</span>']
                for c in r["classes"]]
    parts = [f"<p>{esc(chosen)}: {images(r['flips']['broken'])} that FP32 got right and INT8 gets wrong, "
             f"{r['flips']['fixed']} the other way round. Per class: top-1 accuracy of FP32 and INT8 on the "
             f"evaluation images of that class (largest changes first).</p>"]
    parts.append(table(["class", "images", "FP32 top-1", "INT8 top-1", "change (pts)"], cls_rows)
                 if cls_rows else f"<p>{esc(no_class_rows(r))}</p>")
    body.append(section("classes", "Classes whose accuracy changed most", parts))
    files = [f"<code>{esc(Path(res[n]['int8_model']).name)}</code> (cache <code>{esc(res[n]['cache'])}</code>)"
             for n in names]
    body.append(notes(r, [f"INT8 models: {', '.join(files)}", f"total time {r.get('seconds')} s"]))
    return page(f"calib compare: {r['model']}", body)


def write_compare_report(stage: Path, report, figures: list[dict]) -> None:
    """compare.json, compare.md and report.html of a CompareReport (or its JSON dict)."""
    r = as_json(report)
    atomic_write_text(Path(stage) / "compare.json", json.dumps(r, indent=2) + "\n")
    atomic_write_text(Path(stage) / "compare.md", render_markdown(r))
    atomic_write_text(Path(stage) / "report.html", render_html(r, figures))
