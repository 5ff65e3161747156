"""Issue 21's task corpus on this machine: detectors, a segmenter, a pose model and a BERT-like model
through calib's command line, every figure the closing note asks for.

    python benchmarks/corpus_tasks.py --images ../shared/data/imagenet-sample
    python benchmarks/corpus_tasks.py --render benchmarks/corpus_tasks.json   # the RESULTS.md section only

The models and the pipeline are the tests' (tests/corpus/vision_tasks.py, task_archs.py,
task_pipeline.py): per architecture and exporter (legacy, dynamo), `calib calibrate` on the
calibration images, `calib run --task ... --dataset images|npz` in both Q/DQ flavors on the
evaluation images (reusing that cache), `calib build --qdq-flavor tensorrt` and TensorRT-RTX's
parser and builder (strongly typed, SM 8.9 ahead of time). Every command is a fresh process.

Figures, per architecture and exporter:
- calibration seconds: calib's own (the statistics pass and the ranges, as the cache's sidecar
  records them), and the `calib calibrate` command's wall time (process start, model intake and
  export checks included);
- per flavor, the worst output SQNR of report.json (the lowest `sqnr_db` over the outputs) and the
  task metric against FP32;
- detectors: detections kept, the top-k overlap of FP32's most confident anchors (k = 10, 20, 50,
  100; tests/quantize/head_models.py) on every evaluation image under the default placement, the
  convolutions only, the head quantized and the default with the ort flavor's integer SiLU gates
  and Concats left float, from minmax ranges on the calibration images (checked equal to the
  cache's);
- the TensorRT-RTX result: ok, or the first line of the error.

Writes benchmarks/corpus_tasks.json and the corpus section of benchmarks/RESULTS.md (between its
markers; the other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- corpus-tasks:begin -->", "<!-- corpus-tasks:end -->"
BODY_FLOAT = "default, SiLU and Concat float"   # task_pipeline.BODY_FLOAT (imported late: see _paths)
WEIGHTS = {"deeplab": "EfficientNet-Lite0 backbone pretrained (ImageNet), head random"}
DESCRIPTION = {
    "yolo": "YOLOv8-style: C2f/CSP, SPPF, PAN, DFL decode, Sigmoid scores, one (N, 24, 336) output",
    "ssd": "SSDLite/RetinaNet-style: anchor decode in the graph, boxes (N, 1008, 4) + scores (N, 1008, 20)",
    "deeplab": "DeepLabV3+: ASPP, decoder, bilinear Resize to (N, 21, 96, 96)",
    "pose": "SimpleBaseline: ResNet + 3 ConvTranspose, heatmaps (N, 17, 24, 24)",
    "bert": "BERT-like: int64 input_ids + attention_mask (16 tokens), 2 layers, (N, 16, 32) + (N, 3)",
}


def _paths() -> None:
    for p in (ROOT, ROOT / "tests" / "corpus"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def measure(corpus, arch: str, exporter: str, rtx) -> dict:
    """One architecture and exporter through the pipeline; a failing step is recorded, not raised."""
    row: dict = {"arch": arch, "exporter": exporter}
    try:
        case = corpus.calibrated(arch, exporter)
        row["export_s"] = round(case.export_seconds, 2)
        row["calibrate"] = {"ok": case.calibrate.ok, "command_s": round(case.calibrate.seconds, 2)}
        if not case.calibrate.ok:
            row["calibrate"]["error"] = case.calibrate.why()
            return row
        meta = json.loads(case.cache.with_suffix(".json").read_text())
        row["calibrate"].update(calibration_s=meta["seconds"], samples=meta["samples"], tensors=len(meta["tensors"]))
        row["runs"] = {}
        for flavor in ("tensorrt", "ort"):
            step, report = corpus.run(arch, exporter, flavor)
            run = {"ok": step.ok, "command_s": round(step.seconds, 2)}
            if report is not None:
                sqnr = {o["name"]: o["sqnr_db"] for o in report["outputs"]}
                finite = [v for v in sqnr.values() if v is not None and math.isfinite(v)]
                m = report["metric"]
                run.update(sqnr_db=sqnr, worst_sqnr_db=min(finite) if len(finite) == len(sqnr) else None,
                           metric={"name": m["name"], "fp32": m["fp32"], "int8": m["int8"], "drop": m["drop"],
                                   "drop_ci95": m["drop_ci95"]},
                           images=report["eval"]["samples"], reused_cache=report["calibration"]["reused"])
            if not step.ok:
                run["error"] = step.why()
            row["runs"][flavor] = run
        step, path = corpus.build(arch, exporter, "tensorrt")
        row["build"] = {"ok": step.ok, "command_s": round(step.seconds, 2)}
        if not step.ok:
            row["build"]["error"] = step.why()
        if rtx is None:
            row["tensorrt_rtx"] = {"result": "not installed"}
        elif step.ok:
            b = corpus.tensorrt_rtx(arch, exporter, rtx)
            row["tensorrt_rtx"] = {"result": b.summary(), "build_s": round(b.seconds, 2), "engine_bytes": b.engine_bytes,
                                   "quantize_layers": b.layers.get("QUANTIZE", 0),
                                   "dequantize_layers": b.layers.get("DEQUANTIZE", 0)}
        else:
            row["tensorrt_rtx"] = {"result": "no model: calib build failed"}
        if arch in ("yolo", "ssd"):
            row["topk"] = {}
            for flavor in ("tensorrt", "ort"):
                r = corpus.topk(arch, exporter, flavor)
                row["topk"][flavor] = {**r, "overlap": {n: [round(v, 4) for v in o] for n, o in r["overlap"].items()}}
    except Exception as e:   # noqa: BLE001 - one failure must not end the run
        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        row["trace"] = traceback.format_exc()[-2000:]
    return row


# ----------------------------------------------------------------------------- the section
def _fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _overlaps(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def render(data: dict) -> str:
    """The RESULTS.md section (between its markers) from corpus_tasks.json."""
    m, p = data["machine"], data["params"]
    rows = data["rows"]
    lines = [BEGIN, "", "## Task corpus: detectors, a segmenter, pose and a BERT-like model (issue 21)", "",
             f"- Date: {m['date']}; total {data['seconds']:.0f} s",
             f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} cores), every step "
             f"on the CPU, {m['ram_gb']} GB RAM; load average at start {tuple(round(x, 2) for x in m['load_avg_at_start'])}",
             f"- Versions: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             f"- Command: `{data['command']}`",
             f"- Data: real photos of the ImageNet sample (seeded, disjoint): {p['bn_images']} set the BatchNorm "
             f"statistics of the random-weight parts, {p['calibration']} calibrate (`calib calibrate --samples "
             f"{p['calibration']}`, minmax), {p['evaluation']} evaluate (`calib run --eval-samples {p['run_eval']}`, "
             f"and the top-k check); the BERT-like model reads as many .npz samples of seeded tokens.",
             "- Models (tests/corpus/vision_tasks.py, task_archs.py; seeded random weights unless said): "
             + "; ".join(f"`{a}` {DESCRIPTION[a]}" + (f" ({WEIGHTS[a]})" if a in WEIGHTS else "")
                         for a in dict.fromkeys(r["arch"] for r in rows)) + ".",
             "- Method: benchmarks/corpus_tasks.py (the pipeline of tests/corpus/test_task_corpus.py). Every command "
             "is a fresh `python -m calib.cli` process, `--workers 0`. Calibration s: calib's statistics pass and "
             "ranges (the cache sidecar's `seconds`); command s: the wall time of `calib calibrate` (process start "
             "and model intake included). Worst SQNR: the lowest `sqnr_db` over the model's outputs in report.json "
             "(INT8 against FP32 on the evaluation images). TensorRT-RTX: the tensorrt flavor `calib build` wrote, "
             "parsed and built strongly typed for SM 8.9 ahead of time (no GPU), batch profile 1/4/8.", "",
             "| arch | exporter | calibration s (command s) | worst SQNR tensorrt | worst SQNR ort | task metric vs FP32 "
             "(tensorrt / ort) | TensorRT-RTX | engine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r and "runs" not in r:
            lines.append(f"| {r['arch']} | {r['exporter']} | error: {r['error']} | | | | | |")
            continue
        cal = r["calibrate"]
        runs = r.get("runs", {})
        t, o = runs.get("tensorrt", {}), runs.get("ort", {})
        metric = t.get("metric") or {}
        name = metric.get("name", "-").replace("argmax_agreement:", "argmax agreement ")
        values = " / ".join(_fmt(x.get("metric", {}).get("int8"), 3) for x in (t, o))
        trt = r.get("tensorrt_rtx", {})
        engine = f"{trt['engine_bytes'] / 1e6:.1f} MB, {trt['build_s']:.1f} s" if trt.get("engine_bytes") else "-"
        lines.append(f"| {r['arch']} | {r['exporter']} | {_fmt(cal.get('calibration_s'), 2)} ({_fmt(cal['command_s'])}) "
                     f"| {_fmt(t.get('worst_sqnr_db'))} dB | {_fmt(o.get('worst_sqnr_db'))} dB | {name}: {values} "
                     f"| {trt.get('result', '-')} | {engine} |")
    lines += ["", "Every run exited 0 with a finite SQNR for every output: "
              + ("**yes**" if all(run.get("ok") and run.get("worst_sqnr_db") is not None
                                  for r in rows for run in r.get("runs", {}).values())
                 and all(len(r.get("runs", {})) == 2 for r in rows) else "**no**")
              + "; TensorRT-RTX parsed and built every tensorrt-flavor model: "
              + ("**yes**" if all(r.get("tensorrt_rtx", {}).get("result") == "ok" for r in rows) else "**no**") + ".",
              "", "Detections kept: the fraction of FP32's top-k anchors by best class score that INT8 keeps among its "
              f"own top k, mean over the {p['evaluation']} evaluation images, k = 10 / 20 / 50 / 100 "
              "(tests/quantize/head_models.py: the default placement; convolutions only, no head analysis and every "
              "other op type excluded; head quantized, no head analysis and YOLO's box+score Concat, or SSD's scores "
              "output, under one scale; and the default with Sigmoid, Mul and Concat left float, what the ort flavor "
              "runs as integer SiLU gates and Concats and the tensorrt flavor never quantizes). Ranges: minmax on the calibration images, equal to the cache's "
              + ("(checked)" if all(t["ranges_match"] for r in rows for t in r.get("topk", {}).values()) else
                 "(**not** equal: see corpus_tasks.json)") + ".", "",
              "| arch | exporter | flavor | default | convolutions only | head quantized | default, SiLU and Concat "
              "float |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for flavor, t in r.get("topk", {}).items():
            ov = t["overlap"]
            lines.append(f"| {r['arch']} | {r['exporter']} | {flavor} | {_overlaps(ov['default'])} "
                         f"| {_overlaps(ov['convs only'])} | {_overlaps(ov['head quantized'])} "
                         f"| {_overlaps(ov[BODY_FLOAT])} |")
    lines += ["", "{{NOTES}}", "", END]
    return "\n".join(lines)


NOTES_BEGIN, NOTES_END = "<!-- corpus-tasks-notes:begin -->", "<!-- corpus-tasks-notes:end -->"
NOTES_PLACEHOLDER = "(what the figures say: written by hand after a run, kept by later runs)"


def write_section(path: Path, section: str) -> None:
    """Replace the corpus section of RESULTS.md (keeping its hand-written notes), or append it."""
    from _bench_util import _block

    old = path.read_text() if path.is_file() else ""
    notes = _block(old, NOTES_BEGIN, NOTES_END) or f"{NOTES_BEGIN}\n{NOTES_PLACEHOLDER}\n{NOTES_END}"
    section = section.replace("{{NOTES}}", notes)
    current = _block(old, BEGIN, END)
    text = old.replace(current, section, 1) if current else old.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="the ImageNet sample (a folder with val/)")
    ap.add_argument("--calibration", type=int, default=32, help="calibration images (default 32)")
    ap.add_argument("--evaluation", type=int, default=256, help="evaluation images (default 256)")
    ap.add_argument("--archs", nargs="*", help="architectures (default: all)")
    ap.add_argument("--exporters", nargs="*", default=["legacy", "dynamo"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "corpus_tasks.json")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--render", type=Path, help="only write the RESULTS.md section from this JSON")
    args = ap.parse_args()
    if args.render:
        write_section(args.results, render(json.loads(args.render.read_text())))
        print(f"wrote the corpus section of {args.results}")
        return
    if args.images is None:
        ap.error("--images is needed (or --render)")
    _paths()
    from _bench_util import machine_info
    from task_pipeline import ARCHS, BN_IMAGES, TaskCorpus

    try:
        import tensorrt_rtx_bindings as trt

        from trt_rtx import TrtRtx

        rtx = TrtRtx(trt)
    except ImportError:
        rtx = None
    start = time.perf_counter()
    machine = machine_info()
    archs = args.archs or list(ARCHS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="corpus-tasks-") as tmp:
        corpus = TaskCorpus(Path(tmp), args.images.resolve(), calibration=args.calibration,
                            evaluation=args.evaluation, run_eval=args.evaluation)
        for arch in archs:
            for exporter in args.exporters:
                t = time.perf_counter()
                row = measure(corpus, arch, exporter, rtx)
                rows.append(row)
                runs = row.get("runs", {})
                print(f"{arch:8s} {exporter:7s} {time.perf_counter() - t:6.1f} s  "
                      + "  ".join(f"{f}: {_fmt(r.get('worst_sqnr_db'))} dB" for f, r in runs.items())
                      + f"  TRT-RTX: {row.get('tensorrt_rtx', {}).get('result', row.get('error', '-'))}", flush=True)
    command = "python benchmarks/corpus_tasks.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = {"machine": machine, "command": command, "seconds": round(time.perf_counter() - start, 1),
            "params": {"bn_images": BN_IMAGES, "calibration": args.calibration, "evaluation": args.evaluation,
                       "run_eval": args.evaluation, "calibrator": "minmax", "workers": 0},
            "rows": rows}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    write_section(args.results, render(data))
    print(f"wrote {args.out} and the corpus section of {args.results}")


if __name__ == "__main__":
    main()
