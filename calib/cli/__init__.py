"""The `calib` command line: a thin layer over `calib.commands`. Each command collects its option
groups (`groups.py`, after Polygraphy's argument groups: each declares its options once and
builds its part of the RunConfig; defaults come from the library, `defaults.py`), makes one call
into `calib.commands`, and prints a few lines (`console.py`). No library work happens here.

Errors from bad input are one line on stderr and a non-zero exit; no tracebacks (set
CALIB_DEBUG=1 to see one). An internal error (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from typing import Optional

import typer

try:   # typer from 0.2x carries its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:   # older typer runs on click itself
    from click.exceptions import ClickException, UsageError

    try:
        from click.exceptions import NoArgsIsHelpError
    except ImportError:   # click < 8.2 prints the help and exits without raising
        NoArgsIsHelpError = ()

from calib.cli import console
from calib.cli.defaults import param
from calib.cli.groups import (NORMALISATION, REQUIRED, BatchArgs, BudgetArgs, CalibratorArgs, DataArgs, DeviceArgs,
                              JsonArgs, LabelArgs, ModelArgs, OutputArgs, QuantizeArgs, ReportArgs, TensorRTArgs, opt,
                              run_config, with_groups)
from calib.errors import CalibError, Note

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
@with_groups
def run(*, model: ModelArgs, data: DataArgs, labels: LabelArgs, calibrator: CalibratorArgs, quantize: QuantizeArgs,
        batches: BatchArgs, output: OutputArgs = OutputArgs("cache_dir", "out"), device: DeviceArgs,
        budget: BudgetArgs, report: ReportArgs) -> None:
    """Calibrate, build the INT8 model, and report its accuracy against FP32."""
    from calib.commands.run import run as run_command

    result = run_command(run_config(model, data, labels, calibrator, quantize, batches, output, device, budget,
                                    report))
    console.run_summary(result.to_json(), report.html)


COMPARE = "calib.commands.compare", "compare_calibrators"


@app.command()
@with_groups
def compare(
    *, model: ModelArgs, data: DataArgs,
    calibrators: str = opt("--calibrators", default=param(*COMPARE, shown=",".join),
                           help="comma-separated calibrators to compare"),
    chosen: Optional[str] = opt("--chosen", default=param(*COMPARE),
                                help="calibrator the detailed sections show (default: the highest logits SQNR "
                                     "against FP32 on the evaluation images)"),
    calibrator: CalibratorArgs = CalibratorArgs.without("calibrator"), quantize: QuantizeArgs, batches: BatchArgs,
    output: OutputArgs = OutputArgs("cache_dir", "out"), device: DeviceArgs,
    sqnr_images: int = opt("--sqnr-images", min=1, default=param(*COMPARE),
                           help="evaluation images for the per-layer SQNR"),
) -> None:
    """Compare calibrators on the same images: accuracy, histograms with thresholds, per-layer SQNR."""
    from calib.commands.compare import compare_calibrators

    config = run_config(model, data, calibrator, quantize, batches, output, device)
    report = compare_calibrators(config, calibrators.split(","), config.out, chosen=chosen, sqnr_images=sqnr_images)
    console.compare_summary(report.to_json())


SENSITIVITY = "calib.commands.sensitivity", "rank_sensitivity"


@app.command()
@with_groups
def sensitivity(
    *, model: ModelArgs, data: DataArgs = DataArgs.without("eval_samples"), calibrator: CalibratorArgs,
    quantize: QuantizeArgs, decoding: LabelArgs = LabelArgs("decoder", "decoder_params"),
    images: int = opt("--images", min=1, default=param(*SENSITIVITY), help="evaluation images the ranking runs on"),
    weighted_only: bool = opt("--weighted-only", default=param(*SENSITIVITY), help="rank Conv/Gemm/MatMul only"),
    batches: BatchArgs, output: OutputArgs = OutputArgs("cache_dir", "out"), device: DeviceArgs,
) -> None:
    """Rank the quantized layers by the damage each does alone (the SQNR against FP32 of the logits, or of
    the output a layer hurts most for --task detect|segment|generic)."""
    from calib.commands.sensitivity import rank_sensitivity

    config = run_config(model, data, decoding, calibrator, quantize, batches, output, device)
    report = rank_sensitivity(config, config.out, images=images, weighted_only=weighted_only)
    console.sensitivity_summary(report.to_json())


@app.command()
@with_groups
def calibrate(*, model: ModelArgs, data: DataArgs = DataArgs.without("eval_data_dir", "eval_samples"),
              calibrator: CalibratorArgs, batches: BatchArgs = BatchArgs("calib_batch_size"),
              output: OutputArgs = OutputArgs("cache_dir"), device: DeviceArgs) -> None:
    """Calibrate only: write the cache (TensorRT format + metadata) and print its path."""
    from calib.commands.calibrate import calibrate_only

    outcome, plan = calibrate_only(run_config(model, data, calibrator, batches, output, device))
    console.notes(plan.notes)
    typer.echo(str(outcome.entry.path))


cache_app = typer.Typer(help="List, inspect, verify, compare, import and export calibration caches.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")

BUILD = "calib.commands.build", "build"


@app.command()
@with_groups
def build(
    *, cache: str = opt("--cache", default=REQUIRED, help="calibration cache (.cache, with its .json sidecar)"),
    model: ModelArgs = ModelArgs.without(*NORMALISATION),
    quantize: QuantizeArgs = QuantizeArgs("backend", "qdq_flavor", "exclude", "exclude_ops"),
    out: str = opt("--out", default=REQUIRED, help="INT8 Q/DQ ONNX file (ort) or engine file (tensorrt)"),
    force: bool = opt("--force", default=param(*BUILD),
                      help="build even if the model hash differs; tensors without a scale stay float"),
    bias_correction: bool = opt("--bias-correction/--no-bias-correction", help="apply the cache's bias correction"),
    trt: TensorRTArgs, output: OutputArgs = OutputArgs("overwrite"),
    device: str = opt("--device", help="cpu (default), cuda, cuda:N or auto: with --backend ort, load the built model "
                                       "in ONNX Runtime's CUDA provider on that GPU and run it once"),
) -> None:
    """Build the INT8 model from a cache alone (no dataset), after validating the cache."""
    from calib.commands.build import build as build_command

    config = run_config(model, quantize, bias_correction=bias_correction, device=device)
    console.build_summary(build_command(config, cache, out, force=force, overwrite=output.overwrite, **trt.config()))


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise CalibError(f"{option} must be integers separated by commas, not '{text}'") from None


@app.command()
@with_groups
def bench(
    *, model: ModelArgs = ModelArgs("model", "input_size", "input_shape"), quantize: QuantizeArgs = QuantizeArgs("backend"),
    batch_sizes: str = opt("--batch-sizes", default="1,32", help="comma-separated batch sizes"),
    seconds: float = opt("--seconds", default=3.0, help="timed seconds per batch size"),
    precision: Optional[str] = opt("--precision", default=None,
                                   help="fp32, fp16 or int8: the precision TensorRT builds the engine in (default: "
                                        "the model's own; ONNX Runtime runs the model as it is)"),
    trt: TensorRTArgs = TensorRTArgs("timing_cache"), device: DeviceArgs = DeviceArgs("device"), output: JsonArgs,
) -> None:
    """Latency percentiles and throughput at the given batch sizes, for either backend."""
    from calib.commands.bench import bench as bench_command

    sizes = _int_list(batch_sizes, "--batch-sizes")
    rows = bench_command(run_config(model, quantize, device), sizes, seconds, precision, trt.timing_cache)
    if output.as_json:
        console.as_json(rows)
    else:
        console.bench_table(rows)


@cache_app.command("list")
@with_groups
def cache_list(*, output: OutputArgs = OutputArgs("cache_dir")) -> None:
    """Table of the caches in the cache folder."""
    from calib.commands.cache import list_caches

    console.cache_list_table(list_caches(output.cache_dir), output.cache_dir)


@cache_app.command("show")
@with_groups
def cache_show(cache: str = typer.Argument(..., help="cache file"), *, output: JsonArgs) -> None:
    """Metadata and the scale table, largest first, with outliers flagged."""
    from calib.commands.cache import show_cache

    view = show_cache(cache)
    if output.as_json:
        console.as_json(view.to_json())
        return
    console.notes(view.problems, "warning")
    console.cache_show(view.entry, view.scales)


CACHE = "calib.commands.cache"


@cache_app.command("verify")
@with_groups
def cache_verify(cache: str = typer.Argument(..., help="cache file"), *,
                 model: ModelArgs = ModelArgs.without(*NORMALISATION),
                 qdq_flavor: str = opt("--qdq-flavor", default=param(CACHE, "verify_cache", "flavor"),
                                       help="flavor whose tensors must have scales")) -> None:
    """Exit 0 only if the cache is valid for the model."""
    from calib.commands.cache import verify_cache

    checked = verify_cache(run_config(model), cache, qdq_flavor)
    typer.echo(f"ok: {cache} is valid for {checked.name} ({qdq_flavor} flavor)")


@cache_app.command("diff")
def cache_diff(a: str = typer.Argument(..., help="first cache"), b: str = typer.Argument(..., help="second cache"),
               top: int = typer.Option(20, "--top", min=0, help="rows to show")) -> None:
    """Per-tensor scale ratio b/a, largest changes first."""
    from calib.commands.cache import diff_caches

    console.cache_diff_table(diff_caches(a, b), a, b, top)


@cache_app.command("import")
@with_groups
def cache_import(file: str = typer.Argument(..., help="a cache written by TensorRT"), *, model: ModelArgs,
                 output: OutputArgs = OutputArgs("cache_dir"),
                 force: bool = opt("--force", default=param(CACHE, "import_trt_cache"),
                                   help="import a cache that lacks scales for some quantized tensors (they stay "
                                        "float)")) -> None:
    """Attach metadata to a TensorRT-written cache and add it to the cache folder."""
    from calib.commands.cache import import_trt_cache

    console.import_summary(import_trt_cache(run_config(model, output), file, force=force))


@cache_app.command("export")
@with_groups
def cache_export(cache: str = typer.Argument(..., help="cache file"), *,
                 trt_version: str = opt("--trt-version", default=REQUIRED, help="TensorRT version, e.g. 10.3 or 8.6.1"),
                 out: str = opt("--out", default=REQUIRED, help="where to write the cache for TensorRT"),
                 assume_version: bool = opt("--assume-version", default=param(CACHE, "export_trt_cache"),
                                            help="write a TensorRT version calib does not know as released (with a "
                                                 "warning)"),
                 model: str | None = opt("--model", default=None,
                                         help="validate the cache against this model first, as cache verify does "
                                              "(efficientnet_lite0/1/2 or an ONNX file)"),
                 qdq_flavor: str = opt("--qdq-flavor", default=param(CACHE, "export_trt_cache", "flavor"),
                                       help="with --model: the flavor whose tensors must have scales"),
                 output: OutputArgs = OutputArgs("overwrite")) -> None:
    """Write the cache with the header a TensorRT <= 10 build expects (trtexec --int8 --calib=FILE)."""
    from calib.commands.cache import export_trt_cache
    from calib.session.config import RunConfig

    config = RunConfig(model=model) if model is not None else None
    result = export_trt_cache(cache, trt_version, out, assume_version=assume_version, overwrite=output.overwrite,
                              config=config, flavor=qdq_flavor)
    console.notes(result.warnings, "warning")
    typer.echo(str(result.path))


class Interrupted(BaseException):
    """A stop signal, raised in the main thread by `_interrupt`. A BaseException, like
    KeyboardInterrupt, not a CalibError: library code that falls back on `except Exception`
    (ONNX shape inference that rejects a model, a file that is "simply not ours") swallowed a
    SIGTERM arriving there, and the run went on to the end."""
    exit_code = 130

    def __init__(self, what: str = "interrupted") -> None:
        super().__init__(what)


_SIGNAL_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
if hasattr(signal, "SIGHUP"):
    _SIGNAL_WORDS[signal.SIGHUP] = "terminated (hangup)"


_MAIN_PID = os.getpid()


def _interrupt(signum, frame) -> None:
    """Turn a stop signal into Interrupted in the command's process. Decoding workers forked from
    it inherit this handler for SIGHUP (they reset SIGINT and SIGTERM themselves); a hangup
    reaches the whole process group, and the parent ends its workers, so a worker ignores it
    instead of printing its own traceback."""
    if os.getpid() != _MAIN_PID:
        return
    raise Interrupted(_SIGNAL_WORDS.get(signum, "terminated"))


def _report(message: str) -> None:
    """Print the one error line; after a SIGHUP the terminal may be gone (EIO), and a failed
    write must not turn the clean exit into a traceback."""
    try:
        typer.echo(message, err=True)
    except OSError:
        pass


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{'note' if issubclass(category, Note) else 'warning'}: {message}\n"


def usage_line(error: UsageError) -> str:
    """A usage error (unknown option, bad value, missing argument) as calib's one line, naming the
    command's --help: the same style as every other bad input, not click's usage block."""
    message = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    where = ctx.command_path if ctx is not None and ctx.command_path else "calib"
    return f"{message} (see {where} --help)"


def _command():
    """The command; under torchrun, rank 0 runs it and every other rank serves its passes, then
    ends with nothing written and exit 0 (`calib.commands.job`)."""
    from calib.commands.job import run_command

    return run_command(lambda: app(prog_name="calib", standalone_mode=False))


def main() -> None:
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    warnings.formatwarning = _format_warning
    # Ctrl-C, SIGTERM and SIGHUP (a closed terminal or ssh session: by default it killed the run
    # silently, leaving its staged folder) raise Interrupted rather than KeyboardInterrupt, which
    # click would swallow into its own exit; Interrupted travels past `except Exception` to the
    # one-line handler below, and the `finally` blocks on its way (staged outputs, worker pools)
    # clean up. A SIGHUP ignored by the caller (nohup) stays ignored.
    for signum in _SIGNAL_WORDS:
        if signum == getattr(signal, "SIGHUP", None) and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        signal.signal(signum, _interrupt)
    try:
        code = _command()
        sys.exit(code if isinstance(code, int) else 0)   # --help, --version and typer.Exit give their code
    except UsageError as e:
        if isinstance(e, NoArgsIsHelpError):   # `calib`, `calib cache`: the help is what was asked for
            e.show()
            sys.exit(e.exit_code)
        _report(f"calib: error: {usage_line(e)}")
        sys.exit(2)
    except ClickException as e:   # a parameter's own failure (e.g. a file it could not open)
        _report(f"calib: error: {' '.join(e.format_message().split())}")
        sys.exit(e.exit_code)
    except typer.Abort:
        _report("calib: error: aborted")
        sys.exit(1)
    except (CalibError, Interrupted) as e:
        if os.environ.get("CALIB_DEBUG"):
            raise
        _report(f"calib: error: {e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _report("calib: error: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
