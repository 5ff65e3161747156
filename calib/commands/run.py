"""`calib run` as a library call: calibrate (or reuse the cache), materialize the INT8 model
from the cache, evaluate FP32 and INT8 on the same images, write the report."""

from __future__ import annotations

import contextlib
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from calib import __version__
from calib.backends import get_backend
from calib.cache import CacheStore
from calib.calibration import CalibrationOutcome, calibrate
from calib.datasets import plan_data
from calib.errors import CalibError
from calib.evaluate import evaluate
from calib.models import Model, ZOO, prepared_model, resolve_model
from calib.quantize.flavors import quantize_model
from calib.report import write_run_report


@dataclass
class RunConfig:
    model: str = "efficientnet_lite0"
    preprocess: str | None = None
    dataset: str = "demo"
    data_dir: str | None = None
    samples: int = 500
    eval_data_dir: str | None = None
    eval_samples: int | None = None
    calibrator: str = "minmax"  # the default of ModelOpt and ONNX Runtime; see README
    calibrator_params: dict = field(default_factory=dict)
    backend: str = "ort"
    qdq_flavor: str | None = None
    batch_size: int = 32
    calib_batch_size: int = 4  # activations of every quantized tensor are held per batch
    cache_dir: str = "caches"
    out: str | None = None
    seed: int = 0
    recalibrate: bool = False
    workers: int | None = None
    progress: bool = True
    bias_correction: bool = True
    max_drop: float | None = None        # fallback budget: largest top-1 drop (fraction: 0.002 = 0.2 points)
    min_agreement: float | None = None   # fallback budget: smallest top-1 agreement with FP32 (fraction)
    html: bool = True                    # report.html with histograms and per-tensor SQNR


def bias_means(entry, enabled: bool = True) -> dict | None:
    """Channel means from the cache's sidecar, when bias correction is on and the cache has them
    (caches imported from TensorRT do not)."""
    return entry.metadata.channel_means if enabled and entry.metadata is not None else None


def default_flavor(backend: str) -> str:
    return "tensorrt" if backend == "tensorrt" else "ort"


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = config.model if config.model in ZOO else Path(config.model).stem
    return Path("runs") / f"{stamp}-{stem}-{kind or config.calibrator}"


@dataclass
class RunSetup:
    model: Model
    flavor: str
    data: object  # calib.datasets.DataPlan
    prepared: onnx.ModelProto
    out: Path


def setup(config: RunConfig, out: str | Path | None = None, kind: str | None = None) -> RunSetup:
    """What run, compare and sensitivity share: the model, the Q/DQ flavor, the calibration and
    evaluation data, the prepared FP32 graph and the output folder."""
    model = resolve_model(config.model, config.preprocess)
    flavor = config.qdq_flavor or default_flavor(config.backend)
    data = plan_data(config.dataset, config.data_dir, model.preprocess, config.samples, config.seed,
                     config.eval_data_dir, config.eval_samples)
    out = Path(out) if out else default_out(config, kind)
    return RunSetup(model, flavor, data, prepared_model(model), out)


@contextlib.contextmanager
def staged_output(out: Path):
    """Write into a hidden sibling folder and rename it to `out` only on success, so a failed
    or interrupted run leaves no half-written report behind."""
    if out.exists() and any(out.iterdir()):
        raise CalibError(f"output folder {out} already exists and is not empty (choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        if out.exists():
            out.rmdir()
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run(config: RunConfig) -> dict:
    if config.max_drop is not None or config.min_agreement is not None:
        from calib.fallback import check_budget

        check_budget(config.max_drop, config.min_agreement)  # before any calibration work
    backend = get_backend(config.backend)
    s = setup(config, config.out)
    model, flavor, data, prepared, out = s.model, s.flavor, s.data, s.prepared, s.out
    with staged_output(out) as stage:
        outcome = calibrate(model, prepared, data.calibration, config.calibrator, CacheStore(config.cache_dir),
                            batch_size=config.calib_batch_size, workers=config.workers, recalibrate=config.recalibrate,
                            calibrator_params=config.calibrator_params, progress=config.progress)
        int8_onnx = stage / "int8.onnx"
        qdq, _ = quantize_model(prepared, outcome.entry.cache.amax(), flavor,
                                channel_means=bias_means(outcome.entry, config.bias_correction))
        fallback = None
        if config.max_drop is not None or config.min_agreement is not None:
            from calib.fallback import fallback_to_budget

            fallback = fallback_to_budget(prepared, outcome.entry.cache.amax(), flavor, data.evaluation,
                                          max_drop=config.max_drop, min_agreement=config.min_agreement,
                                          batch_size=config.batch_size, workers=config.workers, seed=config.seed,
                                          progress=config.progress,
                                          channel_means=bias_means(outcome.entry, config.bias_correction))
            qdq = fallback.model  # evaluated below on the held-out subset only
        onnx.save(qdq, str(int8_onnx))
        ev, artifacts = evaluate_models(backend, {"fp32": model.path, "int8": int8_onnx},
                                        fallback.final_dataset if fallback else data.evaluation, stage, config)
        fp32_artifact, int8_artifact = (out / a.name if a.parent == stage else a for a in artifacts.values())
        report = build_report(config, model, flavor, data, outcome, ev, out, fp32_artifact, int8_artifact)
        if config.backend == "ort":
            report["ort_kernels"] = integer_kernel_check(int8_onnx)
        if fallback is not None:
            report["fallback"] = fallback.report(ev)
        write_run_report(stage, report)
        if config.html:
            from calib.compare import run_html_extras
            from calib.report.html import write_run_html

            extras = run_html_extras(prepared, qdq, outcome, flavor, data.calibration, data.evaluation,
                                     config.calibrator, batch_size=config.batch_size, workers=config.workers,
                                     progress=config.progress)
            write_run_html(stage, report, extras)
    return report


def evaluate_models(backend, models: dict[str, Path], dataset, stage: Path, config: RunConfig,
                    stems: dict[str, str] | None = None):
    """Turn each ONNX model into the backend's artifact (ONNX Runtime runs the ONNX file itself;
    TensorRT gets an engine in `stage`, named by `stems`), run them all on each decoded batch,
    release them. Returns the evaluation and the artifact paths, keyed like `models`."""
    suffix = backend.artifact_suffix()
    artifacts = {}
    for name, path in models.items():
        if suffix == ".onnx":
            artifacts[name] = Path(path)
        else:
            stem = (stems or {}).get(name, name)
            artifacts[name] = backend.build(path, stage / f"{stem}{suffix}", "fp32" if name == "fp32" else "int8")
    runners = {}
    try:
        for name, artifact in artifacts.items():
            runners[name] = backend.load(artifact)
        ev = evaluate(runners, dataset, config.batch_size, config.workers,
                      progress="evaluating" if config.progress else None)
    finally:
        for r in runners.values():
            r.close()
    if not ev.keys:
        raise CalibError("no evaluation image could be decoded")
    return ev, artifacts


def integer_kernel_check(int8_onnx: Path) -> dict:
    """Which convolutions ONNX Runtime really runs as integer kernels after its own fusions."""
    from calib.backends.ort import optimized_op_counts

    ops = optimized_op_counts(int8_onnx)
    return {"QLinearConv": ops.get("QLinearConv", 0), "float_conv": ops.get("Conv", 0) + ops.get("FusedConv", 0),
            "QGemm": ops.get("QGemm", 0), "QLinearAdd": ops.get("QLinearAdd", 0)}


def build_report(config: RunConfig, model: Model, flavor: str, data, outcome: CalibrationOutcome, ev,
                 out: Path, fp32_artifact: Path, int8_artifact: Path) -> dict:
    fp32, int8 = ev.summary("fp32"), ev.summary("int8")
    import numpy
    import onnxruntime

    return {
        "model": model.name,
        "dataset": config.dataset if not config.data_dir else f"{config.dataset}:{config.data_dir}",
        "demo": data.demo,
        "calibrator": config.calibrator,
        "calibrator_params": outcome.entry.metadata.key.calibrator_params if outcome.entry.metadata else {},
        "backend": config.backend,
        "qdq_flavor": flavor,
        "preprocess": model.preprocess.params,
        "fp32_model": str(fp32_artifact),
        "int8_model": str(int8_artifact),
        "calibration": {"samples": outcome.samples, "seconds": round(outcome.seconds, 3),
                        "cache": str(outcome.entry.path), "reused": outcome.reused,
                        "skipped": len(outcome.skipped), "requested_samples": data.requested_samples},
        "eval": {"samples": len(ev.keys), "skipped": len(ev.skipped), "skipped_files": ev.skipped,
                 "disjoint_from_calibration": True},
        "fp32": fp32,
        "int8": int8,
        "bias_correction": bool(config.bias_correction and outcome.entry.metadata
                                and outcome.entry.metadata.channel_means),
        "top1_drop": fp32["top1"] - int8["top1"],
        "agreement": ev.agreement(),
        "notes": list(data.notes),
        "versions": {"calib": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                     "numpy": numpy.__version__, "python": platform.python_version()},
        "model_sha256": model.sha256,
    }
