"""calib's calibrators vs an FP32 pass and ONNX Runtime's own quantize_static, on one machine.

    python benchmarks/calibration.py --images ../shared/data/imagenet-sample          # 30-60 min on 2 cores, quiet machine
    python benchmarks/calibration.py --images ../shared/data/imagenet-sample --quick  # smoke run, 40 images

Everything runs in one process tree, on the same images (a seeded sample of `--count`, default
500, images of the folder) with EfficientNet-Lite0. Each measured item is a child process (this
script with `--child`), so peak memory is per item:

- fp32: one FP32 inference pass over the images, decoding included (run twice: first and after
  calib's timed calibrations; the faster one is the reference).
- calib-<calibrator>: `calib.calibration.calibrate` exactly as `calib calibrate` runs it (temporary
  CacheStore, recalibrate, default batch size and workers) on all images, and again on `--small`
  (100) images for the memory-growth check.
- ort-<method>-s8 / ort-minmax-u8: `onnxruntime.quantization.quantize_static` (QDQ, per-channel int8
  weights; s8 = symmetric int8 activations like TensorRT, u8 = ORT's default asymmetric uint8),
  fed in chunks of about `--ort-chunk` (100) images through CalibStridedMinMax.
- Accuracy on unseen images by 2-fold cross-validation: the images are split (seeded) into halves
  A and B; calibrate on A, evaluate on B, then the reverse; the figures pool both folds. calib's
  four calibrators share one statistics pass per fold (which also takes the channel means of
  bias correction, as `calibrate` does); each one's scales go through a TensorRT cache text
  round trip, like the real path, and become both Q/DQ flavors, bias-corrected unless
  --no-bias-correction.
- Throughput under ONNX Runtime at batch 1 and 32 (FP32, calib's entropy scales in both flavors,
  ORT's models calibrated on all images), ONNX Runtime's optimized op counts, TensorRT validity.

Writes benchmarks/RESULTS.md and benchmarks/results.json (with --quick: a temporary folder unless
--out-dir is given, so a smoke run never replaces real results).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _bench_util as U  # noqa: E402
import _report  # noqa: E402

CALIBRATORS = ("entropy", "minmax", "percentile", "mse")
FLAVORS = ("tensorrt", "ort")
# name: (CalibrationMethod, activation QuantType, symmetric activations)
ORT_VARIANTS = {"ort-minmax-s8": ("MinMax", "QInt8", True), "ort-entropy-s8": ("Entropy", "QInt8", True),
                "ort-percentile-s8": ("Percentile", "QInt8", True), "ort-minmax-u8": ("MinMax", "QUInt8", False)}
SPEED_CALIBRATOR = "entropy"
BATCHES = (1, 32)


# ------------------------------------------------------------------------------- child side
def _model(p):
    from calib.models import resolve_model

    return resolve_model(p["model"])


def _dataset(p, subset: str):
    """all | take:N | fold<k>-calib | fold<k>-eval, always derived from the same seeded sample."""
    from calib.data import Dataset, imagenet_val, split, take

    full = take(Dataset.of(imagenet_val(p["images"]), _model(p).preprocess), p["count"], p["seed"])
    if subset == "all":
        return full
    if subset.startswith("take:"):
        return take(full, int(subset[5:]), p["seed"])
    a, b = split(full, len(full) // 2, p["seed"])
    fold, role = int(subset[4]), subset.split("-")[1]
    return (a, b)[fold ^ (role == "eval")]


def child_fp32(p) -> dict:
    from calib.backends.ort import OrtRunner
    from calib.data import iter_batches

    m, ds = _model(p), _dataset(p, "all")
    with U.MemoryMonitor() as mem:
        start = time.perf_counter()
        runner = OrtRunner(m.path)
        loaded = time.perf_counter()
        n = 0
        for batch in iter_batches(ds, p["fp32_batch"], progress=None):
            runner.run(batch.images)
            n += len(batch.keys)
        end = time.perf_counter()
    return {"wall_s": end - start, "pass_s": end - loaded, "images": n, "batch": p["fp32_batch"], "memory": mem.result()}


def child_calib(p) -> dict:
    from calib.cache import CacheStore
    from calib.calibration import calibrate
    from calib.models import prepared_model

    m = _model(p)
    prepared, ds = prepared_model(m), _dataset(p, p["subset"])
    with U.MemoryMonitor() as mem:
        start = time.perf_counter()
        outcome = calibrate(m, prepared, ds, p["calibrator"], CacheStore(p["store"]), recalibrate=True)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "collect_s": outcome.seconds, "images": outcome.samples,
            "cache": str(outcome.entry.path), "memory": mem.result()}


def child_ort(p) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method, act_type, symmetric = ORT_VARIANTS[p["variant"]]
    m, ds = _model(p), _dataset(p, p["subset"])
    batch, stride = U.plan_chunks(len(ds), p["ort_chunk"])
    extra = {"CalibStridedMinMax": stride, "CalibMovingAverage": False, "WeightSymmetric": True}
    if symmetric:
        extra.update(ActivationSymmetric=True, CalibTensorRangeSymmetric=True)
    with U.MemoryMonitor() as mem:
        start = time.perf_counter()
        reader = U.chunked_reader(ds, m.input_name, batch)
        try:
            quantize_static(str(m.path), p["out"], reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=getattr(QuantType, act_type), weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
        finally:
            reader.close()
        wall = time.perf_counter() - start
    return {"wall_s": wall, "images": reader.position * batch, "reader_batch": batch, "chunk_images": batch * stride,
            "chunks": reader.chunks, "extra_options": extra, "memory": mem.result(),
            "trt_validity": U.trt_validity(p["out"])}


def _amax_via_cache(calibrator, ranges: dict, tensors: list[str]) -> dict:
    """Scales -> TensorRT cache text -> parsed back -> amax, as `calib run` materializes models."""
    from calib.cache import TrtCache, parse
    from calib.quantize.qdq import activation_scale

    scales = {t: activation_scale(ranges[t].amax, 127) for t in tensors if t in ranges}
    return parse(TrtCache.from_scales(scales, calibrator.trt_algorithm).to_text()).amax()


def child_fold_calib(p) -> dict:
    import onnx

    from calib.calibration import calibrated_tensors, weighted_inputs
    from calib.calibrators import TensorStatistics, get_calibrator
    from calib.calibrators.channel_means import ChannelMeans, Observers
    from calib.passes import observe_pass
    from calib.models import prepared_model
    from calib.quantize import quantize_model

    m = _model(p)
    prepared, ds = prepared_model(m), _dataset(p, f"fold{p['fold']}-calib")
    stats = TensorStatistics(histogram=True)
    calibrators = {name: get_calibrator(name, stats) for name in CALIBRATORS}
    means = ChannelMeans(weighted_inputs(prepared))  # bias correction's E[x], as calibrate() collects it
    res = observe_pass(prepared, ds, Observers(stats, means), batch_size=4, progress=None,
                  tensors=calibrated_tensors(prepared))
    channel_means = json.loads(json.dumps(means.means())) if p["bias_correction"] else None  # via the sidecar
    out, validity = {}, {}
    for name, cal in calibrators.items():
        amax = _amax_via_cache(cal, cal.compute(), res.tensors)
        for flavor in FLAVORS:
            qdq, _ = quantize_model(prepared, amax, flavor, channel_means=channel_means)
            path = Path(p["dir"]) / f"calib-{name}-{flavor}.onnx"
            onnx.save(qdq, str(path))
            out[f"calib-{name}-{flavor}"] = str(path)
            if flavor == "tensorrt":
                validity[name] = U.trt_validity(qdq)
    return {"images": res.images, "collect_s": res.seconds, "models": out, "trt_validity": validity,
            "bias_corrected": bool(channel_means)}


def child_evaluate(p) -> dict:
    from calib.backends.ort import OrtRunner
    from calib.passes import evaluate

    m, ds = _model(p), _dataset(p, f"fold{p['fold']}-eval")
    runners = {"fp32": OrtRunner(m.path), **{name: OrtRunner(Path(path)) for name, path in p["models"].items()}}
    ev, _ = evaluate(runners, ds, batch_size=32, progress=None)
    fp32_top1 = ev.predictions["fp32"].top5[:, 0]
    counts = {}
    for name, pred in ev.predictions.items():
        counts[name] = {"top1": int((pred.top5[:, 0] == pred.labels).sum()),
                        "top5": int((pred.top5 == pred.labels[:, None]).any(axis=1).sum()),
                        "agree": int((pred.top5[:, 0] == fp32_top1).sum())}
    return {"images": len(ev.keys), "skipped": len(ev.skipped), "counts": counts}


def child_speed(p) -> dict:
    import onnx

    from calib.backends import time_runner
    from calib.backends.ort import OrtRunner, optimized_op_counts
    from calib.cache import load_cache
    from calib.models import prepared_model
    from calib.quantize import quantize_model

    m = _model(p)
    models = {"fp32": str(m.path)}
    entry = load_cache(p["cache"])  # the cache as read back, like `calib run`
    means = entry.channel_means(p["bias_correction"])
    for flavor in FLAVORS:
        path = Path(p["dir"]) / f"calib-{SPEED_CALIBRATOR}-{flavor}.onnx"
        onnx.save(quantize_model(prepared_model(m), entry.cache.amax(), flavor, channel_means=means)[0], str(path))
        models[f"calib-{SPEED_CALIBRATOR}-{flavor}"] = str(path)
    models.update(p["ort_models"])
    # Timed as written (what ONNX Runtime deploys), like the op counts below; accuracy figures
    # come from calib's evaluation (integer-exact graphs for int8-activation models).
    runners = {name: OrtRunner(Path(path), exact=False) for name, path in models.items()}
    shape = tuple(m.input_shape[1:])
    best: dict = {}
    for _ in range(p["rounds"]):  # rounds interleave the models, so a busy moment hits them all alike
        for name, runner in runners.items():
            for b in BATCHES:
                t = time_runner(runner, shape, b, seconds=p["seconds"]).as_dict()
                key = f"{name}@{b}"
                if key not in best or t["throughput"] > best[key]["throughput"]:
                    best[key] = t
    ops = {name: dict(optimized_op_counts(Path(path))) for name, path in models.items()}
    validity = {name: U.trt_validity(path) for name, path in models.items() if name != "fp32"}
    return {"timings": best, "op_counts": ops, "trt_validity": validity, "models": models}


CHILDREN = {"fp32": child_fp32, "calib": child_calib, "ort": child_ort, "fold_calib": child_fold_calib,
            "evaluate": child_evaluate, "speed": child_speed}


# ------------------------------------------------------------------------------ parent side
def run_all(args, workdir: Path) -> dict:
    script = Path(__file__).resolve()
    base = {"images": str(Path(args.images).resolve()), "model": args.model, "count": args.count, "seed": args.seed}
    child = lambda kind, name, **kw: U.run_child(script, kind, {**base, **kw}, workdir, name)  # noqa: E731
    res: dict = {"fp32": [], "calib": {}, "calib_small": {}, "ort": {}, "folds": []}

    def note(label: str, r: dict, key: str = "wall_s") -> None:
        if "error" in r:
            print(f"  {label}: FAILED ({r['error']})")
        else:
            peak = r.get("memory", {}).get("main_peak")
            print(f"  {label}: {r[key]:.1f} s" + (f", peak RSS {U.fmt_bytes(peak)}" if peak else ""), flush=True)

    print("timing and memory (one child process each)")
    res["fp32"].append(child("fp32", "fp32-1", fp32_batch=args.fp32_batch))
    note("fp32 pass", res["fp32"][-1])
    for cal in CALIBRATORS:
        res["calib"][cal] = child("calib", f"calib-{cal}-all", calibrator=cal, subset="all",
                                  store=str(workdir / "caches" / cal))
        note(f"calib {cal} ({args.count} images)", res["calib"][cal])
        res["calib_small"][cal] = child("calib", f"calib-{cal}-small", calibrator=cal, subset=f"take:{args.small}",
                                        store=str(workdir / "caches-small" / cal))
        note(f"calib {cal} ({args.small} images)", res["calib_small"][cal])
    res["fp32"].append(child("fp32", "fp32-2", fp32_batch=args.fp32_batch))
    note("fp32 pass (again)", res["fp32"][-1])
    (workdir / "ort").mkdir(exist_ok=True)
    for variant in ORT_VARIANTS:
        out = workdir / "ort" / f"{variant}.onnx"
        res["ort"][variant] = child("ort", f"{variant}-all", variant=variant, subset="all", out=str(out),
                                    ort_chunk=args.ort_chunk)
        note(f"{variant} ({args.count} images)", res["ort"][variant])

    print("accuracy by 2-fold cross-validation")
    for fold in (0, 1):
        d = workdir / f"fold{fold}"
        d.mkdir(exist_ok=True)
        fc = child("fold_calib", f"fold{fold}-calib", fold=fold, dir=str(d), bias_correction=args.bias_correction)
        note(f"fold {fold}: calib statistics pass", fc, "collect_s")
        models = dict(fc.get("models", {}))
        ort_folds = {}
        for variant in ORT_VARIANTS:
            r = child("ort", f"fold{fold}-{variant}", variant=variant, subset=f"fold{fold}-calib",
                      out=str(d / f"{variant}.onnx"), ort_chunk=args.ort_chunk)
            note(f"fold {fold}: {variant}", r)
            ort_folds[variant] = r
            if "error" not in r:
                models[variant] = str(d / f"{variant}.onnx")
        ev = child("evaluate", f"fold{fold}-evaluate", fold=fold, models=models)
        print(f"  fold {fold}: evaluated {ev.get('images', 0)} unseen images" if "error" not in ev
              else f"  fold {fold}: evaluation FAILED ({ev['error']})")
        res["folds"].append({"calib": fc, "ort": ort_folds, "evaluate": ev})

    print("throughput")
    speed_cache = res["calib"][SPEED_CALIBRATOR].get("cache")
    ort_models = {v: str(workdir / "ort" / f"{v}.onnx") for v, r in res["ort"].items() if "error" not in r}
    if speed_cache:
        (workdir / "speed").mkdir(exist_ok=True)
        res["speed"] = child("speed", "speed", cache=speed_cache, dir=str(workdir / "speed"), ort_models=ort_models,
                             seconds=args.bench_seconds, rounds=args.bench_rounds,
                             bias_correction=args.bias_correction)
    else:
        res["speed"] = {"error": f"no {SPEED_CALIBRATOR} cache from the timed calibration"}
    print("  done" if "error" not in res["speed"] else f"  FAILED ({res['speed']['error']})")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="../shared/data/imagenet-sample", help="ImageNet-layout folder (<wnid>/*.JPEG)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--count", type=int, default=500, help="images used (a seeded sample of the folder)")
    ap.add_argument("--small", type=int, default=100, help="images of the memory-growth comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp32-batch", type=int, default=32, help="batch of the FP32 reference pass")
    ap.add_argument("--ort-chunk", type=int, default=100, help="images per chunk fed to ORT's calibrators")
    ap.add_argument("--bench-seconds", type=float, default=3.0, help="seconds per model and batch size per round")
    ap.add_argument("--bench-rounds", type=int, default=2, help="interleaved timing rounds (best one kept)")
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                    help="build calib's models without bias correction (like `calib run --no-bias-correction`)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 images, short timings, every step")
    ap.add_argument("--out-dir", default=None, help="where RESULTS.md and results.json go (default benchmarks/)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder (models, caches, child logs)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        U.write_result(args.result, CHILDREN[args.child](json.loads(args.params)))
        return 0

    if args.quick:
        args.count, args.small, args.ort_chunk, args.bench_seconds = 40, 10, 10, 0.3
    out_dir = Path(args.out_dir) if args.out_dir else (
        Path(tempfile.gettempdir()) / "calib-bench-quick" if args.quick else HERE)
    out_dir.mkdir(parents=True, exist_ok=True)

    from calib.data import imagenet_val
    from calib.models import resolve_model

    resolve_model(args.model)  # export the zoo model now, not inside a timed child
    available = len(imagenet_val(args.images).samples)
    if available < args.count:
        print(f"note: {args.images} holds {available} images; using all of them")
        args.count = available
    info = U.machine_info()
    print(f"{info['cpu']}, {info['logical_cpus']} CPUs, {info['ram_gb']} GB; load average {info['load_avg_at_start']}")
    workdir = Path(tempfile.mkdtemp(prefix="calib-bench-"))
    start = time.perf_counter()
    try:
        raw = run_all(args, workdir)
    except BaseException:
        print(f"work folder kept: {workdir}", file=sys.stderr)
        raise
    config = {k: getattr(args, k) for k in ("images", "model", "count", "small", "seed", "fp32_batch", "ort_chunk",
                                            "bench_seconds", "bench_rounds", "bias_correction", "quick")}
    summary = _report.summarize(raw, CALIBRATORS, FLAVORS, ORT_VARIANTS, SPEED_CALIBRATOR, BATCHES)
    results = {"machine": info, "config": config, "total_s": round(time.perf_counter() - start, 1), **summary,
               "raw": raw}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    U.write_results_md(out_dir / "RESULTS.md", _report.markdown(results), _report.LIMITS_PLACEHOLDER)
    print(_report.console(results))
    print(f"wrote {out_dir / 'RESULTS.md'} and {out_dir / 'results.json'}")
    failed = any("error" in r for r in _report.iter_children(raw))
    if args.keep_work or failed:
        print(f"work folder kept: {workdir}" + (" (some children failed: see their .log files)" if failed else ""))
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
