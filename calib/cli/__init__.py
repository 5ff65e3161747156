"""The `calib` command line: a thin layer over the library.

Errors from bad input are one line on stderr and a non-zero exit; no tracebacks (set
CALIB_DEBUG=1 to see one).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from calib.errors import CalibError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="INT8 calibration and quantization workbench.")

ModelOpt = typer.Option("efficientnet_lite0", "--model", help="efficientnet_lite0/1/2 or a path to an ONNX classifier")
PreprocessOpt = typer.Option(None, "--preprocess", help="preprocessing preset: efficientnet-lite or torchvision")
DatasetOpt = typer.Option("demo", "--dataset", help="demo (embedded photos), imagenet-val, or hf:<name-or-path>")
DataDirOpt = typer.Option(None, "--data-dir", help="dataset folder (imagenet-val; default $CALIB_IMAGENET_VAL)")
SamplesOpt = typer.Option(500, "--samples", help="calibration images")
CalibratorOpt = typer.Option("minmax", "--calibrator", help="minmax (default, as ModelOpt and ONNX Runtime), entropy (TensorRT EntropyCalibration2), percentile, mse, or a plug-in")
PercentileOpt = typer.Option(None, "--percentile", help="percentile calibrator: the percentile of |x| (default 99.99)")
BatchOpt = typer.Option(32, "--batch-size", min=1, help="images per evaluation batch")
CalibBatchOpt = typer.Option(4, "--calib-batch-size", min=1,
                             help="images per calibration batch (memory: ~30 MB of activations per image for EfficientNet-Lite0)")
CacheDirOpt = typer.Option("caches", "--cache-dir", help="folder of calibration caches")
SeedOpt = typer.Option(0, "--seed", help="seed of the calibration/evaluation split")
WorkersOpt = typer.Option(None, "--workers", min=0, help="decoding processes (0: decode in this process)")


def _calibrator_params(percentile: float | None) -> dict:
    return {} if percentile is None else {"percentile": percentile}


@app.command()
def run(
    model: str = ModelOpt, preprocess: Optional[str] = PreprocessOpt, dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt, samples: int = SamplesOpt,
    eval_data_dir: Optional[str] = typer.Option(None, "--eval-data-dir", help="separate evaluation folder"),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", min=1, help="limit evaluation images"),
    calibrator: str = CalibratorOpt, percentile: Optional[float] = PercentileOpt,
    backend: str = typer.Option("ort", "--backend", help="ort (ONNX Runtime CPU) or tensorrt"),
    qdq_flavor: Optional[str] = typer.Option(None, "--qdq-flavor", help="tensorrt or ort (default: follows --backend)"),
    batch_size: int = BatchOpt, calib_batch_size: int = CalibBatchOpt, cache_dir: str = CacheDirOpt,
    out: Optional[str] = typer.Option(None, "--out", help="report folder (default runs/<time>-<model>-<calibrator>)"),
    seed: int = SeedOpt,
    recalibrate: bool = typer.Option(False, "--recalibrate", help="ignore a matching cache and calibrate again"),
    workers: Optional[int] = WorkersOpt, bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="correct biases for the mean shift weight quantization causes"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="accuracy budget: largest top-1 drop as a fraction (0.002 = 0.2 points); the most damaging layers stay in float until it is met"),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="accuracy budget: smallest top-1 agreement with FP32 (0.995 = 99.5%)"),
    html: bool = typer.Option(True, "--html/--no-html", help="also write report.html (histograms, per-layer SQNR)"),
) -> None:
    """Calibrate, build the INT8 model, and report its accuracy against FP32."""
    from calib.pipeline import RunConfig, run as run_pipeline

    report = run_pipeline(RunConfig(
        model=model, preprocess=preprocess, dataset=dataset, data_dir=data_dir, samples=samples,
        eval_data_dir=eval_data_dir, eval_samples=eval_samples, calibrator=calibrator,
        calibrator_params=_calibrator_params(percentile), backend=backend, qdq_flavor=qdq_flavor,
        batch_size=batch_size, calib_batch_size=calib_batch_size, cache_dir=cache_dir, out=out, seed=seed,
        recalibrate=recalibrate, workers=workers, bias_correction=bias_correction,
        max_drop=max_drop, min_agreement=min_agreement, html=html))
    out_dir = os.path.dirname(report["int8_model"])
    if report["demo"]:
        typer.echo("DEMO run on 5 embedded photos: see datasets/imagenet-val.md to run on ImageNet.")
    typer.echo(f"FP32 top-1 {report['fp32']['top1']:.2%}  INT8 top-1 {report['int8']['top1']:.2%}  "
               f"drop {100 * report['top1_drop']:.2f} pts  agreement {report['agreement']:.2%}  "
               f"({report['eval']['samples']} images)")
    fb = report.get("fallback")
    if fb:
        f = fb["final"]
        cost = f", INT8 throughput -{100 * fb['throughput']['cost']:.0f}%" if fb.get("throughput") else ""
        typer.echo(f"fallback: {len(fb['float_layers'])} of {fb['layers']} layers left in float; held-out "
                   f"{f['images']} images: drop {100 * f['drop']:.2f} pts, agreement {f['agreement']:.2%} "
                   f"(budget {'met' if fb['final_met'] else 'NOT met'}){cost}")
    typer.echo(f"report: {os.path.join(out_dir, 'report.md')}" + (" and report.html" if html else ""))


@app.command()
def compare(
    model: str = ModelOpt, preprocess: Optional[str] = PreprocessOpt, dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt, samples: int = SamplesOpt,
    eval_data_dir: Optional[str] = typer.Option(None, "--eval-data-dir", help="separate evaluation folder"),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", min=1, help="limit evaluation images"),
    calibrators: str = typer.Option("entropy,minmax,percentile,mse", "--calibrators", help="comma-separated calibrators to compare"),
    chosen: Optional[str] = typer.Option(None, "--chosen", help="calibrator the detailed sections show (default: best agreement)"),
    percentile: Optional[float] = PercentileOpt,
    backend: str = typer.Option("ort", "--backend", help="ort (ONNX Runtime CPU) or tensorrt"),
    qdq_flavor: Optional[str] = typer.Option(None, "--qdq-flavor", help="tensorrt or ort (default: follows --backend)"),
    batch_size: int = BatchOpt, calib_batch_size: int = CalibBatchOpt, cache_dir: str = CacheDirOpt,
    out: Optional[str] = typer.Option(None, "--out", help="report folder (default runs/<time>-<model>-compare)"),
    seed: int = SeedOpt,
    recalibrate: bool = typer.Option(False, "--recalibrate", help="ignore matching caches and calibrate again"),
    workers: Optional[int] = WorkersOpt,
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="correct biases for the mean shift weight quantization causes"),
    sqnr_images: int = typer.Option(16, "--sqnr-images", min=1, help="evaluation images for the per-layer SQNR"),
) -> None:
    """Compare calibrators on the same images: accuracy, histograms with thresholds, per-layer SQNR."""
    from calib.compare import compare as compare_calibrators
    from calib.pipeline import RunConfig

    config = RunConfig(
        model=model, preprocess=preprocess, dataset=dataset, data_dir=data_dir, samples=samples,
        eval_data_dir=eval_data_dir, eval_samples=eval_samples, calibrator_params=_calibrator_params(percentile),
        backend=backend, qdq_flavor=qdq_flavor, batch_size=batch_size, calib_batch_size=calib_batch_size,
        cache_dir=cache_dir, seed=seed, recalibrate=recalibrate, workers=workers, bias_correction=bias_correction)
    r = compare_calibrators(config, calibrators.split(","), Path(out) if out else None, chosen=chosen,
                            sqnr_images=sqnr_images)
    if r["demo"]:
        typer.echo("DEMO run on 5 embedded photos: see datasets/imagenet-val.md to run on ImageNet.")
    typer.echo(f"FP32 top-1 {r['fp32']['top1']:.2%} ({r['eval']['samples']} images)")
    for name in r["calibrators"]:
        x = r["results"][name]
        typer.echo(f"{name:12} top-1 {x['top1']:.2%}  drop {100 * x['top1_drop']:.2f} pts  agreement "
                   f"{x['agreement']:.2%}{'  <- chosen' if name == r['chosen'] else ''}")
    typer.echo(f"report: {os.path.join(r['out'], 'report.html')}")


@app.command()
def sensitivity(
    model: str = ModelOpt, preprocess: Optional[str] = PreprocessOpt, dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt, samples: int = SamplesOpt,
    eval_data_dir: Optional[str] = typer.Option(None, "--eval-data-dir", help="separate evaluation folder"),
    calibrator: str = CalibratorOpt, percentile: Optional[float] = PercentileOpt,
    backend: str = typer.Option("ort", "--backend", help="picks the default Q/DQ flavor"),
    qdq_flavor: Optional[str] = typer.Option(None, "--qdq-flavor", help="tensorrt or ort (default: follows --backend)"),
    images: int = typer.Option(64, "--images", min=1, help="evaluation images the ranking runs on"),
    weighted_only: bool = typer.Option(False, "--weighted-only", help="rank Conv/Gemm/MatMul only"),
    batch_size: int = BatchOpt, calib_batch_size: int = CalibBatchOpt, cache_dir: str = CacheDirOpt,
    out: Optional[str] = typer.Option(None, "--out", help="report folder (default runs/<time>-<model>-sensitivity)"),
    seed: int = SeedOpt, workers: Optional[int] = WorkersOpt,
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="correct biases for the mean shift weight quantization causes"),
) -> None:
    """Rank the quantized layers by the damage each does alone (logits SQNR against FP32)."""
    from calib.pipeline import RunConfig
    from calib.sensitivity import sensitivity as rank

    config = RunConfig(
        model=model, preprocess=preprocess, dataset=dataset, data_dir=data_dir, samples=samples,
        eval_data_dir=eval_data_dir, calibrator=calibrator, calibrator_params=_calibrator_params(percentile),
        backend=backend, qdq_flavor=qdq_flavor, batch_size=batch_size, calib_batch_size=calib_batch_size,
        cache_dir=cache_dir, seed=seed, workers=workers, bias_correction=bias_correction)
    d = rank(config, Path(out) if out else None, images=images, weighted_only=weighted_only)
    for i, r in enumerate(d["sensitivity"]["rows"][:10], 1):
        sq = "inf" if r["logits_sqnr_db"] is None else f"{r['logits_sqnr_db']:.1f}"
        typer.echo(f"{i:3}. {sq:>6} dB  agreement {r['agreement']:.2%}  {r['layer']}")
    typer.echo(f"report: {os.path.join(d['out'], 'report.html')}")


@app.command()
def calibrate(
    model: str = ModelOpt, preprocess: Optional[str] = PreprocessOpt, dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt, samples: int = SamplesOpt, calibrator: str = CalibratorOpt,
    percentile: Optional[float] = PercentileOpt, calib_batch_size: int = CalibBatchOpt, cache_dir: str = CacheDirOpt,
    seed: int = SeedOpt,
    recalibrate: bool = typer.Option(False, "--recalibrate", help="ignore a matching cache and calibrate again"),
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Calibrate only: write the cache (TensorRT format + metadata) and print its path."""
    from calib.cache import CacheStore
    from calib.calibration import calibrate as calibrate_model
    from calib.datasets import plan_data
    from calib.models import resolve_model
    from calib.pipeline import prepared_model

    m = resolve_model(model, preprocess)
    data = plan_data(dataset, data_dir, m.preprocess, samples, seed, evaluate=False)
    outcome = calibrate_model(m, prepared_model(m), data.calibration, calibrator, CacheStore(cache_dir),
                              batch_size=calib_batch_size, workers=workers, recalibrate=recalibrate,
                              calibrator_params=_calibrator_params(percentile))
    for note in data.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(str(outcome.entry.path))


cache_app = typer.Typer(help="List, inspect, verify, compare, import and export calibration caches.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@app.command()
def build(
    cache: str = typer.Option(..., "--cache", help="calibration cache (.cache, with its .json sidecar)"),
    model: str = ModelOpt, preprocess: Optional[str] = PreprocessOpt,
    backend: str = typer.Option("ort", "--backend", help="ort or tensorrt"),
    qdq_flavor: Optional[str] = typer.Option(None, "--qdq-flavor", help="tensorrt or ort (default: follows --backend)"),
    out: str = typer.Option(..., "--out", help="INT8 Q/DQ ONNX file (ort) or engine file (tensorrt)"),
    force: bool = typer.Option(False, "--force", help="build even if the model hash differs; tensors without a scale stay float"),
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="apply the cache's bias correction"),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="TensorRT profile: smallest batch"),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="TensorRT profile: batch to tune for"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="TensorRT profile: largest batch"),
    workspace_mib: Optional[int] = typer.Option(None, "--workspace-mib", help="TensorRT workspace limit"),
    timing_cache: Optional[str] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file, reused across builds"),
) -> None:
    """Build the INT8 model from a cache alone (no dataset), after validating the cache."""
    from calib.build import build_from_cache
    from calib.models import resolve_model
    from calib.pipeline import default_flavor, prepared_model

    m = resolve_model(model, preprocess)
    result = build_from_cache(m, prepared_model(m), Path(cache), qdq_flavor or default_flavor(backend),
                              Path(out), backend=backend, force=force, bias_correction=bias_correction,
                              **_trt_options(backend, min_batch, opt_batch, max_batch, workspace_mib, timing_cache))
    for problem in result.validation.problems():
        typer.echo(f"warning: {problem}", err=True)
    for name in result.left_in_float:
        typer.echo(f"left in float (no scale): {name}", err=True)
    typer.echo(str(result.path))


@app.command()
def bench(
    model: str = ModelOpt,
    backend: str = typer.Option("ort", "--backend", help="ort or tensorrt"),
    batch_sizes: str = typer.Option("1,32", "--batch-sizes", help="comma-separated batch sizes"),
    seconds: float = typer.Option(3.0, "--seconds", help="timed seconds per batch size"),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8 (TensorRT engines)"),
    timing_cache: Optional[str] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file, reused across builds"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Latency percentiles and throughput at the given batch sizes, for either backend."""
    from calib.bench import bench as run_bench
    from calib.models import ZOO, resolve_model

    path = resolve_model(model).path if model in ZOO else Path(model)
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise CalibError(f"--batch-sizes must be integers separated by commas, not '{batch_sizes}'") from None
    options = {"timing_cache": Path(timing_cache)} if timing_cache else {}
    rows = run_bench(path, backend, sizes, seconds, precision, **options)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9}   {path.name} on {backend} ({precision})")
    for r in rows:
        typer.echo(f"{r['batch_size']:>5} {r['latency_ms_p50']:9.2f} {r['latency_ms_p90']:9.2f} "
                   f"{r['latency_ms_p99']:9.2f} {r['throughput']:9.1f}")


@cache_app.command("list")
def cache_list(cache_dir: str = CacheDirOpt) -> None:
    """Table of the caches in the cache folder."""
    from calib.cache import CacheStore

    rows = CacheStore(cache_dir).entries()
    if not rows:
        typer.echo(f"no caches in {cache_dir}")
        return
    typer.echo(f"{'file':60} {'model':20} {'dataset':14} {'calibrator':11} {'samples':>7} created")
    for r in rows:
        typer.echo(f"{r['file']:60} {r['model'][:20]:20} {r['dataset'][:14]:14} {r['calibrator'][:11]:11} "
                   f"{r['samples']:>7} {r['created']}")


@cache_app.command("show")
def cache_show(cache: str = typer.Argument(..., help="cache file"),
               as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Metadata and the scale table, largest first, with outliers flagged."""
    from calib.cache import load_cache
    from calib.cache.inspect import scale_table

    entry = load_cache(cache)
    rows = scale_table(entry)
    if as_json:
        meta = json.loads(entry.metadata.to_json()) if entry.metadata else None
        typer.echo(json.dumps({"header": entry.cache.header, "metadata": meta, "scales": rows}, indent=1))
        return
    typer.echo(f"{entry.path}\nheader: {entry.cache.header}")
    if entry.metadata:
        m = entry.metadata
        typer.echo(f"model: {m.model_name} sha256 {m.key.model_sha256}\ndataset: {m.key.dataset_id} "
                   f"({m.dataset_description}), {m.samples} samples, list sha256 {m.key.dataset_fingerprint[:16]}\n"
                   f"calibrator: {m.key.calibrator} {m.key.calibrator_params}; batch {m.batch_size}; "
                   f"created {m.created}; calib {m.calib_version}; TensorRT {m.trt_version}")
    else:
        typer.echo("no metadata sidecar (import it with: calib cache import FILE --model M)")
    typer.echo(f"{'scale':>12} {'amax':>10} {'observed':>10}  tensor")
    for r in rows:
        obs = f"{r['observed_max']:10.4g}" if r["observed_max"] else f"{'':10}"
        flags = ("  <- " + ", ".join(r["flags"])) if r["flags"] else ""
        typer.echo(f"{r['scale']:12.6g} {r['amax']:10.4g} {obs}  {r['tensor']}{flags}")


@cache_app.command("verify")
def cache_verify(cache: str = typer.Argument(..., help="cache file"), model: str = ModelOpt,
                 preprocess: Optional[str] = PreprocessOpt,
                 qdq_flavor: str = typer.Option("tensorrt", "--qdq-flavor", help="flavor whose tensors must have scales")) -> None:
    """Exit 0 only if the cache is valid for the model."""
    from calib.build import check_cache
    from calib.models import resolve_model
    from calib.pipeline import prepared_model

    m = resolve_model(model, preprocess)
    _, report = check_cache(m, prepared_model(m), Path(cache), qdq_flavor)
    if not report.ok:
        raise CalibError(f"{cache} is not valid for {m.name}: " + "; ".join(report.problems()))
    typer.echo(f"ok: {cache} is valid for {m.name} ({qdq_flavor} flavor)")


@cache_app.command("diff")
def cache_diff(a: str = typer.Argument(..., help="first cache"), b: str = typer.Argument(..., help="second cache"),
               top: int = typer.Option(20, "--top", help="rows to show")) -> None:
    """Per-tensor scale ratio b/a, largest changes first."""
    from calib.cache import load_cache
    from calib.cache.inspect import diff

    d = diff(load_cache(a), load_cache(b))
    typer.echo(f"{'ratio b/a':>10} {'scale a':>12} {'scale b':>12}  tensor")
    for r in d["rows"][:top]:
        typer.echo(f"{r['ratio']:10.4f} {r['a']:12.6g} {r['b']:12.6g}  {r['tensor']}")
    if d["only_a"] or d["only_b"]:
        typer.echo(f"only in {a}: {len(d['only_a'])} tensors; only in {b}: {len(d['only_b'])} tensors")


@cache_app.command("import")
def cache_import(file: str = typer.Argument(..., help="a cache written by TensorRT"), model: str = ModelOpt,
                 preprocess: Optional[str] = PreprocessOpt, cache_dir: str = CacheDirOpt) -> None:
    """Attach metadata to a TensorRT-written cache and add it to the cache folder."""
    from calib.cache import CacheStore
    from calib.cache.interop import import_cache
    from calib.models import resolve_model

    entry = import_cache(Path(file), resolve_model(model, preprocess), CacheStore(cache_dir))
    typer.echo(str(entry.path))


@cache_app.command("export")
def cache_export(cache: str = typer.Argument(..., help="cache file"),
                 trt_version: str = typer.Option(..., "--trt-version", help="TensorRT version, e.g. 10.3 or 8.6.1"),
                 out: str = typer.Option(..., "--out", help="where to write the cache for TensorRT")) -> None:
    """Write the cache with the header a TensorRT <= 10 build expects (trtexec --int8 --calib=FILE)."""
    from calib.cache.interop import export_cache

    typer.echo(str(export_cache(Path(cache), trt_version, Path(out))))


def _trt_options(backend: str, min_batch, opt_batch, max_batch, workspace_mib, timing_cache) -> dict:
    given = {k: v for k, v in dict(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                    workspace_mib=workspace_mib).items() if v is not None}
    if timing_cache:
        given["timing_cache"] = Path(timing_cache)
    if given and backend != "tensorrt":
        raise CalibError(f"--{next(iter(given)).replace('_', '-')} applies to --backend tensorrt only")
    return given


class Interrupted(CalibError):
    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted")


def _interrupt(signum, frame) -> None:
    raise Interrupted()


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _format_warning
    # Ctrl-C raises Interrupted rather than KeyboardInterrupt, which click would swallow into
    # its own exit; Interrupted travels like any CalibError to the one-line handler below.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except CalibError as e:
        if os.environ.get("CALIB_DEBUG"):
            raise
        typer.echo(f"calib: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("calib: error: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
