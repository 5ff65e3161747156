"""The `calib` command line: a thin layer over `calib.commands`: options (declared once in
`options.py`), one call, a few printed lines (`console.py`).

Errors from bad input are one line on stderr and a non-zero exit; no tracebacks (set
CALIB_DEBUG=1 to see one). An internal error (a bug) keeps its traceback.
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

from calib.cli import console
from calib.cli import options as o
from calib.errors import CalibError

# Plain help (no rich boxes): flags read as flags, not "<bool>", and the text greps cleanly.
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="INT8 calibration and quantization workbench.")


def _version(value: bool) -> None:
    if value:
        from calib import __version__

        typer.echo(f"calib {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                 help="print calib's version and exit")) -> None:
    """INT8 calibration and quantization workbench."""


@app.command()
def run(
    model: o.Model = "efficientnet_lite0", preprocess: o.Preprocess = None, input_size: o.InputSize = None,
    dataset: o.Dataset = "demo",
    data_dir: o.DataDir = None, samples: o.Samples = 500, eval_data_dir: o.EvalDataDir = None,
    eval_samples: o.EvalSamples = None, calibrator: o.Calibrator = "minmax", percentile: o.Percentile = None,
    backend: o.Backend = "ort", qdq_flavor: o.QdqFlavor = None, batch_size: o.BatchSize = 32,
    calib_batch_size: o.CalibBatchSize = 4, cache_dir: o.CacheDir = "caches", out: o.Out = None,
    seed: o.Seed = 0, recalibrate: o.Recalibrate = False, workers: o.Workers = None, device: o.Device = "cpu",
    gpu_decode: o.GpuDecode = "nvjpeg", bias_correction: o.BiasCorrection = True,
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="accuracy budget: largest top-1 drop as a fraction (0.002 = 0.2 points); the most damaging layers stay in float until it is met"),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="accuracy budget: smallest top-1 agreement with FP32 (0.995 = 99.5%)"),
    html: bool = typer.Option(True, "--html/--no-html", help="also write report.html (histograms, per-layer SQNR)"),
    speed_seconds: float = typer.Option(1.0, "--speed-seconds", min=0.0, help="seconds of timing per model and batch size for the report's speed figures (0: skip)"),
) -> None:
    """Calibrate, build the INT8 model, and report its accuracy against FP32."""
    from calib.commands.run import run as run_command

    report = run_command(o.run_config(
        model=model, preprocess=preprocess, input_size=input_size, dataset=dataset, data_dir=data_dir, samples=samples,
        eval_data_dir=eval_data_dir, eval_samples=eval_samples, calibrator=calibrator, percentile=percentile,
        backend=backend, qdq_flavor=qdq_flavor, batch_size=batch_size, calib_batch_size=calib_batch_size,
        cache_dir=cache_dir, out=out, seed=seed, recalibrate=recalibrate, workers=workers, device=device,
        gpu_decode=gpu_decode, bias_correction=bias_correction, max_drop=max_drop, min_agreement=min_agreement, html=html,
        speed_seconds=speed_seconds))
    console.run_summary(report.to_json(), html)


@app.command()
def compare(
    model: o.Model = "efficientnet_lite0", preprocess: o.Preprocess = None, input_size: o.InputSize = None,
    dataset: o.Dataset = "demo",
    data_dir: o.DataDir = None, samples: o.Samples = 500, eval_data_dir: o.EvalDataDir = None,
    eval_samples: o.EvalSamples = None,
    calibrators: str = typer.Option("entropy,minmax,percentile,mse", "--calibrators", help="comma-separated calibrators to compare"),
    chosen: Optional[str] = typer.Option(None, "--chosen", help="calibrator the detailed sections show (default: best agreement)"),
    percentile: o.Percentile = None, backend: o.Backend = "ort", qdq_flavor: o.QdqFlavor = None,
    batch_size: o.BatchSize = 32, calib_batch_size: o.CalibBatchSize = 4, cache_dir: o.CacheDir = "caches",
    out: o.Out = None, seed: o.Seed = 0, recalibrate: o.Recalibrate = False, workers: o.Workers = None, device: o.Device = "cpu",
    gpu_decode: o.GpuDecode = "nvjpeg", bias_correction: o.BiasCorrection = True,
    sqnr_images: int = typer.Option(16, "--sqnr-images", min=1, help="evaluation images for the per-layer SQNR"),
) -> None:
    """Compare calibrators on the same images: accuracy, histograms with thresholds, per-layer SQNR."""
    from calib.commands.compare import compare_calibrators

    config = o.run_config(
        model=model, preprocess=preprocess, input_size=input_size, dataset=dataset, data_dir=data_dir, samples=samples,
        eval_data_dir=eval_data_dir, eval_samples=eval_samples, percentile=percentile, backend=backend,
        qdq_flavor=qdq_flavor, batch_size=batch_size, calib_batch_size=calib_batch_size, cache_dir=cache_dir,
        seed=seed, recalibrate=recalibrate, workers=workers, device=device, gpu_decode=gpu_decode,
        bias_correction=bias_correction)
    r = compare_calibrators(config, calibrators.split(","), Path(out) if out else None, chosen=chosen,
                            sqnr_images=sqnr_images)
    console.compare_summary(r.to_json())


@app.command()
def sensitivity(
    model: o.Model = "efficientnet_lite0", preprocess: o.Preprocess = None, input_size: o.InputSize = None,
    dataset: o.Dataset = "demo",
    data_dir: o.DataDir = None, samples: o.Samples = 500, eval_data_dir: o.EvalDataDir = None,
    calibrator: o.Calibrator = "minmax", percentile: o.Percentile = None,
    backend: o.Backend = "ort",
    qdq_flavor: o.QdqFlavor = None,
    images: int = typer.Option(64, "--images", min=1, help="evaluation images the ranking runs on"),
    weighted_only: bool = typer.Option(False, "--weighted-only", help="rank Conv/Gemm/MatMul only"),
    batch_size: o.BatchSize = 32, calib_batch_size: o.CalibBatchSize = 4, cache_dir: o.CacheDir = "caches",
    out: o.Out = None, seed: o.Seed = 0, recalibrate: o.Recalibrate = False, workers: o.Workers = None, device: o.Device = "cpu",
    gpu_decode: o.GpuDecode = "nvjpeg", bias_correction: o.BiasCorrection = True,
) -> None:
    """Rank the quantized layers by the damage each does alone (logits SQNR against FP32)."""
    from calib.commands.sensitivity import rank_sensitivity

    config = o.run_config(
        model=model, preprocess=preprocess, input_size=input_size, dataset=dataset, data_dir=data_dir, samples=samples,
        eval_data_dir=eval_data_dir, calibrator=calibrator, percentile=percentile, backend=backend,
        qdq_flavor=qdq_flavor, batch_size=batch_size, calib_batch_size=calib_batch_size, cache_dir=cache_dir,
        seed=seed, recalibrate=recalibrate, workers=workers, device=device, gpu_decode=gpu_decode,
        bias_correction=bias_correction)
    d = rank_sensitivity(config, Path(out) if out else None, images=images, weighted_only=weighted_only)
    console.sensitivity_summary(d.to_json())


@app.command()
def calibrate(
    model: o.Model = "efficientnet_lite0", preprocess: o.Preprocess = None, input_size: o.InputSize = None,
    dataset: o.Dataset = "demo",
    data_dir: o.DataDir = None, samples: o.Samples = 500, calibrator: o.Calibrator = "minmax",
    percentile: o.Percentile = None, calib_batch_size: o.CalibBatchSize = 4, cache_dir: o.CacheDir = "caches",
    seed: o.Seed = 0, recalibrate: o.Recalibrate = False, workers: o.Workers = None, device: o.Device = "cpu",
    gpu_decode: o.GpuDecode = "nvjpeg",
) -> None:
    """Calibrate only: write the cache (TensorRT format + metadata) and print its path."""
    from calib.commands.calibrate import calibrate_only

    outcome, data = calibrate_only(o.run_config(
        model=model, preprocess=preprocess, input_size=input_size, dataset=dataset, data_dir=data_dir, samples=samples,
        calibrator=calibrator, percentile=percentile, calib_batch_size=calib_batch_size, cache_dir=cache_dir,
        seed=seed, recalibrate=recalibrate, workers=workers, device=device, gpu_decode=gpu_decode))
    for note in data.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(str(outcome.entry.path))


cache_app = typer.Typer(help="List, inspect, verify, compare, import and export calibration caches.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")


@app.command()
def build(
    cache: str = typer.Option(..., "--cache", help="calibration cache (.cache, with its .json sidecar)"),
    model: o.Model = "efficientnet_lite0", preprocess: o.Preprocess = None, input_size: o.InputSize = None,
    backend: o.Backend = "ort", qdq_flavor: o.QdqFlavor = None,
    out: str = typer.Option(..., "--out", help="INT8 Q/DQ ONNX file (ort) or engine file (tensorrt)"),
    force: bool = typer.Option(False, "--force", help="build even if the model hash differs; tensors without a scale stay float"),
    bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="apply the cache's bias correction"),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="TensorRT profile: smallest batch"),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="TensorRT profile: batch to tune for"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="TensorRT profile: largest batch"),
    workspace_mib: Optional[int] = typer.Option(None, "--workspace-mib", help="TensorRT workspace limit"),
    timing_cache: o.TimingCache = None,
    compute_capability: o.ComputeCapability = None,
    overwrite: o.Overwrite = False,
    device: str = typer.Option("cpu", "--device", help="cpu (default), cuda, cuda:N or auto: with --backend ort, "
                               "load the built model in ONNX Runtime's CUDA provider on that GPU and run it once"),
) -> None:
    """Build the INT8 model from a cache alone (no dataset), after validating the cache."""
    from calib.commands.build import build_device, build_from_cache, check_on_device
    from calib.models import parse_input_size, prepared_model, resolve_model
    from calib.session import default_flavor

    checked_on = build_device(device, backend)
    m = resolve_model(model, preprocess, parse_input_size(input_size))
    result = build_from_cache(m, prepared_model(m), Path(cache), qdq_flavor or default_flavor(backend),
                              Path(out), backend=backend, force=force, bias_correction=bias_correction,
                              overwrite=overwrite,
                              **_trt_options(backend, min_batch, opt_batch, max_batch, workspace_mib, timing_cache,
                                             compute_capability))
    for problem in result.validation.problems():
        typer.echo(f"warning: {problem}", err=True)
    for name in result.left_in_float:
        typer.echo(f"left in float (no scale): {name}", err=True)
    if checked_on != "cpu":
        check_on_device(result.path, checked_on, *m.size)
        typer.echo(f"runs in ONNX Runtime's CUDA provider on {checked_on}", err=True)
    typer.echo(str(result.path))


@app.command()
def bench(
    model: o.Model = "efficientnet_lite0", input_size: o.InputSize = None,
    backend: o.Backend = "ort",
    batch_sizes: str = typer.Option("1,32", "--batch-sizes", help="comma-separated batch sizes"),
    seconds: float = typer.Option(3.0, "--seconds", help="timed seconds per batch size"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8: the precision TensorRT builds the engine in (default: the model's own; ONNX Runtime runs the model as it is)"),
    timing_cache: o.TimingCache = None,
    device: o.Device = "cpu",
    as_json: o.Json = False,
) -> None:
    """Latency percentiles and throughput at the given batch sizes, for either backend."""
    from calib.commands.bench import bench_model
    from calib.models import ZOO, parse_input_size, resolve_model

    path = resolve_model(model).path if model in ZOO else Path(model)
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise CalibError(f"--batch-sizes must be integers separated by commas, not '{batch_sizes}'") from None
    extra = {"timing_cache": Path(timing_cache)} if timing_cache else {}
    rows = bench_model(path, backend, sizes, seconds, precision, input_size=parse_input_size(input_size),
                       device=device, **extra)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    console.bench_table(rows, path.name, backend, rows[0]["precision"])


@cache_app.command("list")
def cache_list(cache_dir: o.CacheDir = "caches") -> None:
    """Table of the caches in the cache folder."""
    from calib.cache import CacheStore

    console.cache_list_table(CacheStore(cache_dir).entries(), cache_dir)


@cache_app.command("show")
def cache_show(cache: str = typer.Argument(..., help="cache file"), as_json: o.Json = False) -> None:
    """Metadata and the scale table, largest first, with outliers flagged."""
    from calib.cache import load_cache
    from calib.cache.inspect import scale_table

    from calib.cache import validate_entry

    entry = load_cache(cache)
    rows = scale_table(entry)
    problems = validate_entry(entry).problems()  # shown, not fatal: show is how one looks at a bad cache
    if as_json:
        meta = json.loads(entry.metadata.to_json()) if entry.metadata else None
        typer.echo(json.dumps({"header": entry.cache.header, "metadata": meta, "scales": rows,
                               "problems": problems}, indent=1))
        return
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    console.cache_show(entry, rows)


@cache_app.command("verify")
def cache_verify(cache: str = typer.Argument(..., help="cache file"), model: o.Model = "efficientnet_lite0",
                 preprocess: o.Preprocess = None, input_size: o.InputSize = None,
                 qdq_flavor: str = typer.Option("tensorrt", "--qdq-flavor", help="flavor whose tensors must have scales")) -> None:
    """Exit 0 only if the cache is valid for the model."""
    from calib.commands.build import check_cache
    from calib.models import parse_input_size, prepared_model, resolve_model

    m = resolve_model(model, preprocess, parse_input_size(input_size))
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

    console.cache_diff_table(diff(load_cache(a), load_cache(b)), a, b, top)


@cache_app.command("import")
def cache_import(file: str = typer.Argument(..., help="a cache written by TensorRT"), model: o.Model = "efficientnet_lite0",
                 preprocess: o.Preprocess = None, input_size: o.InputSize = None, cache_dir: o.CacheDir = "caches",
                 force: bool = typer.Option(False, "--force", help="import a cache that lacks scales for some quantized tensors (they stay float)")) -> None:
    """Attach metadata to a TensorRT-written cache and add it to the cache folder."""
    from calib.cache import CacheStore
    from calib.cache.interop import import_cache
    from calib.models import resolve_model

    from calib.models import parse_input_size, prepared_model
    from calib.quantize import required_tensors

    m = resolve_model(model, preprocess, parse_input_size(input_size))
    result = import_cache(Path(file), m, CacheStore(cache_dir), required=required_tensors(prepared_model(m), "tensorrt"),
                          force=force)
    if result.missing:
        typer.echo(f"warning: imported with --force: {len(result.missing)} quantized tensor(s) have no scale and "
                   f"stay float in builds: {', '.join(result.missing[:5])}" + (" …" if len(result.missing) > 5 else ""),
                   err=True)
    typer.echo(str(result.path))


@cache_app.command("export")
def cache_export(cache: str = typer.Argument(..., help="cache file"),
                 trt_version: str = typer.Option(..., "--trt-version", help="TensorRT version, e.g. 10.3 or 8.6.1"),
                 out: str = typer.Option(..., "--out", help="where to write the cache for TensorRT"),
                 assume_version: bool = typer.Option(False, "--assume-version", help="write a TensorRT version calib does not know as released (with a warning)"),
                 overwrite: o.Overwrite = False) -> None:
    """Write the cache with the header a TensorRT <= 10 build expects (trtexec --int8 --calib=FILE)."""
    from calib.cache.interop import export_cache

    result = export_cache(Path(cache), trt_version, Path(out), assume=assume_version, overwrite=overwrite)
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(str(result.path))


def _trt_options(backend: str, min_batch, opt_batch, max_batch, workspace_mib, timing_cache,
                 compute_capability=None) -> dict:
    given = {k: v for k, v in dict(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                    workspace_mib=workspace_mib, compute_capability=compute_capability).items()
             if v is not None}
    if timing_cache:
        given["timing_cache"] = Path(timing_cache)
    if given and not backend.startswith("tensorrt"):
        raise CalibError(f"--{next(iter(given)).replace('_', '-')} applies to the TensorRT backends only")
    return given


class Interrupted(CalibError):
    exit_code = 130

    def __init__(self, what: str = "interrupted") -> None:
        super().__init__(what)


def _interrupt(signum, frame) -> None:
    raise Interrupted("interrupted" if signum == signal.SIGINT else "terminated")


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _format_warning
    # Ctrl-C and SIGTERM raise Interrupted rather than KeyboardInterrupt, which click would
    # swallow into its own exit; Interrupted travels like any CalibError to the one-line handler
    # below, and the `finally` blocks on its way (staged outputs, worker pools) clean up.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
