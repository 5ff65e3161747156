"""Production builds from a cache alone: validate it against the model, then materialize the
Q/DQ model (or a backend engine). No dataset is touched. With a GPU device (`--device cuda:N`,
ONNX Runtime backend) the built model is then loaded in ONNX Runtime's CUDA provider on that GPU
and run once, so a model that cannot run there is found at build time, not in production.

`build` is the `calib build` command as one call (device and options checked first, then the
build, then the run on the device); `build_from_cache` the build itself, for a resolved model."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from calib.backends import Backend, get_backend
from calib.backends.base import ENGINE_SUFFIXES
from calib.cache import ModelRequirements, Validation, validate_cache
from calib.errors import CalibError
from calib.fsutil import atomic_path, check_output_file, is_calib_onnx, mark_calib_onnx
from calib.models import Model, needs_external_data, prepared_model, save_model
from calib.quantize import quantize_model, required_tensors
from calib.quantize.graph import GraphIndex
from calib.quantize.heads import exclusions_record

if TYPE_CHECKING:
    from calib.session.config import RunConfig


@dataclass
class BuildResult:
    path: Path
    validation: Validation
    left_in_float: list[str]
    device: str = "cpu"        # where the built model was loaded and run once ("cpu": it was not)
    qdq_model: Path | None = None   # an engine's Q/DQ model, kept beside it (qdq_path_for); None for ONNX


def check_artifact_name(out: Path, backend: Backend) -> None:
    """`out` must name what `backend` writes: with the default ort backend `--out model.engine`
    silently got an ONNX file under an engine's name (and a TensorRT build an engine named .onnx)."""
    suffix = backend.artifact_suffix()
    accepted = ENGINE_SUFFIXES if suffix in ENGINE_SUFFIXES else (suffix,)
    if Path(out).suffix.lower() not in accepted:
        what = "an engine" if suffix in ENGINE_SUFFIXES else f"a {suffix} file"
        other = "--backend tensorrt or tensorrt-rtx for an engine" if suffix == ".onnx" else "--backend ort for ONNX"
        raise CalibError(f"--out {out}: --backend {backend.name} writes {what}: name it "
                         f"{' or '.join('*' + a for a in accepted)} ({other})")


def cache_requirements(model: Model, prepared: onnx.ModelProto, flavor: str) -> ModelRequirements:
    """What `model` asks of a cache under the Q/DQ `flavor`: the one set of requirements build,
    `cache verify` and `cache export --model` check a cache against (`calib.cache.validate_cache`)."""
    return ModelRequirements(model.name, model.sha256, tuple(required_tensors(prepared, flavor)),
                             tuple(GraphIndex(prepared).activations()))


def check_cache(model: Model, prepared: onnx.ModelProto, cache_path: Path, flavor: str):
    """The cache and its validation against the model and the flavor's quantized tensors (one
    validation for every use of a cache: calib.cache.validate_cache)."""
    return validate_cache(cache_path, cache_requirements(model, prepared, flavor))


def is_calib_artifact(path: Path) -> bool:
    """An output calib wrote (so --out may replace it): an ONNX model with calib's provenance,
    or an engine with its calib sidecar."""
    return is_calib_onnx(path) or Path(str(path) + ".calib.json").is_file()


def qdq_path_for(engine: Path) -> Path:
    """Where the Q/DQ model an engine is built from is kept: `m.engine` -> `m.qdq.onnx` (not
    `m.onnx`, which is often the user's FP32 model beside it)."""
    return engine.with_name(f"{engine.stem}.qdq.onnx")


def save_atomically(model: onnx.ModelProto, out: Path) -> None:
    """Write an ONNX model so that a reader sees the old file or the whole new one; a model past
    2 GB (external data) is written under its final names in a hidden folder beside `out`, then
    its data file and the .onnx are moved into place, in that order."""
    if not needs_external_data(model):
        with atomic_path(out) as tmp:
            save_model(model, tmp)
        return
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        for written in reversed(save_model(model, Path(tmp) / out.name)):
            os.replace(written, out.parent / written.name)


def build_from_cache(model: Model, prepared: onnx.ModelProto, cache_path: Path, flavor: str, out: Path,
                     backend: str = "ort", force: bool = False, bias_correction: bool = True,
                     overwrite: bool = False, rules: dict | None = None, **backend_options) -> BuildResult:
    """`rules`: the user's exclusions (`RunConfig.placement_rules`: node-name regexes and op types
    left float beside the heads), recorded in the model's provenance when given."""
    out = check_output_file(out, overwrite, is_calib_artifact)
    b = get_backend(backend)
    check_artifact_name(out, b)
    if b.artifact_suffix() != ".onnx":
        check_output_file(qdq_path_for(out), overwrite, is_calib_onnx)
    entry, report = check_cache(model, prepared, cache_path, flavor)
    if report.fatal:
        raise report.error("nothing built")
    if not report.hash_matches and not force:
        raise CalibError(f"cache {cache_path} was calibrated for model sha256 {report.cache_model_sha256}, "
                         f"not {model.name} ({report.model_sha256}); use --force to build anyway")
    if report.missing and not force:
        raise CalibError(f"cache {cache_path}: {report.problems()[-1]}; use --force to leave them in float")
    means = entry.metadata.channel_means if bias_correction and entry.metadata else None
    rules = rules or {}
    qdq, left = quantize_model(prepared, entry.cache.amax(), flavor, allow_missing=force, channel_means=means,
                               **rules)
    mark_calib_onnx(qdq, qdq_flavor=flavor, cache=Path(cache_path).name, **exclusions_record(rules))
    if b.artifact_suffix() == ".onnx":
        save_atomically(qdq, out)
        return BuildResult(out, report, left)
    # An engine is built from the Q/DQ model, kept beside it (the engine's sidecar names it); a
    # failed build (a refused flavor or option) takes the model it wrote away again.
    qdq_path = qdq_path_for(out)
    save_atomically(qdq, qdq_path)
    try:
        b.build(qdq_path, out, "int8", **backend_options)
    except BaseException:
        qdq_path.unlink(missing_ok=True)
        raise
    return BuildResult(out, report, left, qdq_model=qdq_path)


def build_device(spec: str, backend: str) -> str:
    """The one device a build checks its model on ("cpu": none), refused in one line before any
    work when it cannot be used here (the same checks as every other command's --device)."""
    from calib.placement import Launch, check_placement, resolve_placement

    placement = resolve_placement(spec, backend, Launch.from_env())   # auto with a non-ort backend is the CPU
    if placement.several:
        raise CalibError(f"--device {spec}: a build checks its model on one GPU (cuda or cuda:N)")
    if placement.on_gpu and backend != "ort":
        raise CalibError(f"--device {spec} checks the built model in ONNX Runtime's CUDA provider: use it with "
                         f"--backend ort (the {backend} backend builds for the GPU by itself)")
    return check_placement(spec, backend).first


def check_on_device(path: Path, device: str, height: "int | dict", width: int | None = None) -> None:
    """Load the built model in ONNX Runtime's CUDA provider on `device` and run one image (for a
    model fed named arrays, `height` is a feed of zeros: calib.data.arrays.ArrayFeed.zeros)."""
    import numpy as np

    from calib.backends.ort import OrtRunner

    runner = OrtRunner(Path(path), device=device, exact=False)   # the graph as deployed
    try:
        if isinstance(height, dict):
            outs = runner.infer(height)
        else:
            outs = [runner.run(np.zeros((1, 3, height, width), np.float32))]
    finally:
        runner.close()
    if not all(np.all(np.isfinite(np.asarray(o, np.float64))) for o in outs):
        raise CalibError(f"{path} gives non-finite outputs in ONNX Runtime's CUDA provider on {device}")


def trt_options(backend: str, **given) -> dict:
    """The TensorRT build options given (None: not given; `timing_cache` becomes a Path), refused in
    one line for a backend that builds no engine."""
    options = {name: value for name, value in given.items() if value is not None and name != "timing_cache"}
    if given.get("timing_cache"):
        options["timing_cache"] = Path(given["timing_cache"])
    if options and not backend.startswith("tensorrt"):
        raise CalibError(f"--{next(iter(options)).replace('_', '-')} applies to the TensorRT backends only")
    if "compute_capability" in options:   # "8.9" or "89", checked before anything is resolved or written
        from calib.backends.tensorrt.plan import check_compute_capability

        options["compute_capability"] = check_compute_capability(options["compute_capability"])
    return options


def build(config: RunConfig, cache: str | Path, out: str | Path, force: bool = False, overwrite: bool = False,
          **backend_options) -> BuildResult:
    """`calib build`: the INT8 model of `config`'s model (model, preprocess and its normalisation,
    input_size, input_shape, backend, qdq_flavor, bias_correction, device) from `cache` alone,
    written to `out`.

    The device and the backend options are checked before anything is resolved or written; with
    a GPU device the built model is then loaded and run once there (`BuildResult.device`)."""
    from calib.session.config import config_model
    from calib.session.context import default_flavor

    checked_on = build_device(config.device, config.backend)
    options = trt_options(config.backend, **backend_options)
    # The output's name and place, before the model is resolved (a zoo model is exported first).
    check_artifact_name(check_output_file(Path(out), overwrite, is_calib_artifact), get_backend(config.backend))
    model = config_model(config)   # images for a model with one image input, else named arrays
    flavor = config.qdq_flavor or default_flavor(config.backend)
    result = build_from_cache(model, prepared_model(model), Path(cache), flavor, Path(out), backend=config.backend,
                              force=force, bias_correction=config.bias_correction, overwrite=overwrite,
                              rules=config.placement_rules(), **options)
    if checked_on != "cpu":
        from calib.models import fixed_batch

        if model.arrays:
            check_on_device(result.path, checked_on, model.preprocess.zeros(fixed_batch(prepared_model(model)) or 1))
        else:
            check_on_device(result.path, checked_on, *model.size)
        result.device = checked_on
    return result
