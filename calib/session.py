"""What every command that touches a model and images shares: the run configuration (checked
before any work), the resolved model / Q/DQ flavor / data plan / prepared FP32 graph, the output
folder (named and checked here; written through calib.fsutil.staged_dir) and the versions a
report records.

Commands (`calib.commands.*`) build on this; nothing here knows about any one command.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import onnx

from calib.cache import CacheStore
from calib.data.decoders import DECODERS as GPU_DECODERS   # --gpu-decode (calib.calibration.decode_for)
from calib.data.plan import DataPlan, plan_data
from calib.errors import CalibError
from calib.fsutil import check_output_dir
from calib.report.schema import ReportHeader
from calib.placement import CPU, Placement
from calib.models import ZOO, Model, check_classes, parse_input_size, prepared_model, resolve_model


@dataclass
class RunConfig:
    """The options of `calib run` (and of compare/sensitivity, which ignore what they do not use)."""
    model: str = "efficientnet_lite0"
    preprocess: str | None = None
    input_size: str | None = None        # H and W for a model with dynamic H/W ("224", "256x256")
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
    speed_seconds: float = 1.0           # timing per model and batch size for the report (0: skip)
    device: str = "cpu"                  # cpu, cuda, cuda:N, cuda:0,1 (several GPUs) or auto
    gpu_decode: str = "nvjpeg"           # on a GPU: nvjpeg, or pil (the CPU path's pixels; calib.data.host_decode)

    def placement(self) -> Placement:
        """Where the passes run: the CPU or CUDA devices (auto: a GPU only for the ort backend,
        whose CUDA provider runs there; TensorRT runs on its own)."""
        if (self.device or "").strip().lower() == "auto" and self.backend != "ort":
            return CPU
        return resolve_placement(self.device)

    def pass_batch_sizes(self) -> tuple[int, int]:
        """(calibration, evaluation) batch sizes: on a GPU the defaults become 64 and 256 (the
        results do not depend on the batch size, only the speed does); sizes a user set stay."""
        if not self.placement().on_gpu:
            return self.calib_batch_size, self.batch_size
        calib = 64 if self.calib_batch_size == RunConfig.calib_batch_size else self.calib_batch_size
        return calib, 256 if self.batch_size == RunConfig.batch_size else self.batch_size

    def cache_store(self) -> CacheStore:
        """The cache folder of this configuration."""
        return CacheStore(self.cache_dir)

    def dataset_label(self) -> str:
        return self.dataset if not self.data_dir else f"{self.dataset}:{self.data_dir}"


def default_flavor(backend: str) -> str:
    """The Q/DQ flavor a backend builds (TensorRT: symmetric int8; ONNX Runtime: its own layout)."""
    from calib.backends import backend_class

    return backend_class(backend).qdq_flavor


def class_names_of(dataset) -> "Callable[[int], str]":
    """Class index -> name for reports: the dataset's own names (an hf: dataset has them), else
    ImageNet's."""
    from calib.data.classes import class_name

    names = getattr(getattr(dataset, "source", None), "class_names", None)
    if names:
        return lambda i: names[i]
    return class_name


def resolve_placement(spec: str) -> Placement:
    """`Placement.parse`, and "auto": the first GPU when torch sees one and ONNX Runtime has its
    CUDA provider, else the CPU."""
    if (spec or "cpu").strip().lower() != "auto":
        return Placement.parse(spec)
    try:
        import torch

        from calib.backends.ort import require_cuda_provider

        if torch.cuda.is_available():
            require_cuda_provider()
            return Placement((0,))
    except Exception:  # no GPU, no CUDA provider: auto means the CPU
        pass
    return CPU


def check_placement(config: RunConfig, passes: bool = True) -> Placement:
    """The placement, usable here: a GPU run needs torch with CUDA and ONNX Runtime's CUDA provider
    (calib[gpu]) where ONNX Runtime runs there (the ort backend; with `passes`, the calibration
    pass); a TensorRT backend then evaluates on the same GPU batches, and several GPUs shard
    ONNX Runtime's passes only."""
    placement = config.placement()
    if not placement.on_gpu:
        return placement
    if placement.several and config.backend != "ort":
        raise CalibError(f"--device {config.device} shards ONNX Runtime's CUDA provider over several GPUs: use it "
                         f"with --backend ort, or one GPU (--device cuda:N) with --backend {config.backend}")
    from calib.backends.ort import require_cuda_provider
    from calib.data.cuda import require_torch_cuda

    if passes or config.backend == "ort":
        require_cuda_provider()   # first: without calib[gpu] nothing else matters
    for device in placement.devices:
        require_torch_cuda(device)
    return placement


def check_config(config: RunConfig) -> None:
    """Every option that can be checked without the model or the images, checked first: a typo
    must not cost a model export, a calibration pass or a sensitivity ranking before it fails."""
    from calib.backends import backend_class
    from calib.calibration import calibrator_params_for
    from calib.calibrators import get_calibrator
    from calib.quantize import get_flavor
    from calib.restore.budget import check_budget

    # Unknown names and bad parameters (--percentile 150) fail here, naming what is accepted.
    get_calibrator(config.calibrator, **calibrator_params_for(config.calibrator, config.calibrator_params))
    backend_class(config.backend)  # unknown names fail here, naming the choices
    if config.qdq_flavor is not None:
        get_flavor(config.qdq_flavor)  # unknown names fail here, naming the choices
    if config.samples < 1:
        raise CalibError(f"--samples must be at least 1, got {config.samples}")
    if config.eval_samples is not None and config.eval_samples < 1:
        raise CalibError(f"--eval-samples must be at least 1, got {config.eval_samples}")
    if config.batch_size < 1 or config.calib_batch_size < 1:
        raise CalibError("batch sizes must be at least 1")
    if config.max_drop is not None or config.min_agreement is not None:
        check_budget(config.max_drop, config.min_agreement)
    if config.gpu_decode not in GPU_DECODERS:
        raise CalibError(f"--gpu-decode must be one of {', '.join(GPU_DECODERS)}, not '{config.gpu_decode}'")
    if config.gpu_decode == "pil" and config.placement().on_gpu and not sys.platform.startswith("linux"):
        raise CalibError("--gpu-decode pil decodes in forked worker processes, which needs Linux; use --gpu-decode nvjpeg")
    check_placement(config)


def bias_means(entry, enabled: bool = True) -> dict | None:
    """Channel means from the cache's sidecar, when bias correction is on and the cache has them
    (caches imported from TensorRT do not)."""
    return entry.metadata.channel_means if enabled and entry.metadata is not None else None


def eval_section(ev, calibration, evaluation, notes: list[str]) -> dict:
    """The "eval" entry of a report: how many images were evaluated and skipped, and whether they
    overlap the calibration images, computed from the files (calib.data.overlap), never assumed.
    An overlap also goes into `notes`, since it makes every accuracy figure optimistic."""
    from calib.data.overlap import overlap

    o = overlap(calibration, evaluation)
    if not o.disjoint:
        notes.append(f"{o.describe()}: the accuracy figures are optimistic (evaluate on images calibration "
                     "never saw, e.g. --eval-data-dir with another folder)")
    unlabeled = len(getattr(evaluation, "unlabeled", []) or [])
    return {"samples": len(ev.keys), "skipped": len(ev.skipped), "skipped_files": ev.skipped,
            "disjoint_from_calibration": o.disjoint, "overlap": o.to_dict(), "overlap_text": o.describe(),
            "unlabeled": unlabeled, "seconds": round(ev.seconds, 3)}


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = config.model if config.model in ZOO else Path(config.model).stem
    return Path("runs") / f"{stamp}-{stem}-{kind or config.calibrator}"


def versions() -> dict:
    """Library versions a report records (what produced these figures)."""
    import numpy
    import onnxruntime

    from calib import __version__

    return {"calib": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def report_header(config: RunConfig, setup: "RunSetup", placement: Placement = CPU,
                  int8_models: dict[str, Path] | None = None) -> ReportHeader:
    """The header every report shares: model, data, flavor, backend, where it ran and how the
    images were decoded, versions, notes (`int8_models`: the INT8 models whose figures the report shows, as ONNX files)."""
    from calib.calibration import decode_for

    notes = list(setup.data.notes)
    if placement.on_gpu:
        pil = ("images decoded, cropped and resized by Pillow in worker processes (the CPU path's "
               "preprocessing), normalised on the GPU: the CPU path's pixels bit for bit")
        nvjpeg = ("images decoded by nvJPEG and resized on the GPU (Pillow's resampling bit for bit; nvJPEG's "
                  "pixels differ from Pillow's by about one level; --gpu-decode pil gives the CPU path's pixels)")
        notes.append(pil if config.gpu_decode == "pil" else nvjpeg)
    if int8_models and config.backend == "ort":
        note = exact_note(int8_models, placement.first)
        if note:
            notes.append(note)
    return ReportHeader(model=setup.model.name, dataset=config.dataset_label(), demo=setup.data.demo,
                        backend=config.backend, qdq_flavor=setup.flavor, notes=notes, versions=versions(),
                        model_sha256=setup.model.sha256, device=str(placement),
                        decode_path=decode_for(setup.model.preprocess, placement, config.gpu_decode))


def exact_note(int8_models: dict[str, Path], device: str) -> str | None:
    """What the report says about how ONNX Runtime ran the INT8 models on `device`: decided by
    the runner's own rule on each model (calib.backends.ort.runs_integer_exact), so a model the
    runner left as written (subgraphs, past 2 GB, ONNX Runtime's own integer kernels) gets no claim."""
    from calib.backends.ort import runs_integer_exact

    exact = [name for name, path in int8_models.items() if runs_integer_exact(Path(path), device)]
    if not exact:
        return None
    which = "the INT8 model" if len(int8_models) == 1 else (
        "every INT8 model" if len(exact) == len(int8_models) else "INT8 models " + ", ".join(exact))
    # The same figures on the CPU only where the CPU runs the exact graph too (not the ort flavor).
    cpu_kernels = [name for name in exact if not runs_integer_exact(Path(int8_models[name]), "cpu")]
    same = ("; on the CPU ONNX Runtime runs " + ("it" if len(int8_models) == 1 else ", ".join(cpu_kernels)) +
            " with its own integer kernels instead") if cpu_kernels else ": the CPU and the GPU compute the same INT8 figures"
    return (f"ONNX Runtime ran {which} as its integer-exact graph (int8 products summed exactly, then the float "
            f"rescale and bias, as an integer kernel computes them; calib.quantize.exact){same}")


@dataclass
class RunSetup:
    model: Model
    flavor: str
    data: DataPlan
    prepared: onnx.ModelProto
    out: Path


def setup(config: RunConfig, out: str | Path | None = None, kind: str | None = None) -> RunSetup:
    """What run, compare and sensitivity share: the model, the Q/DQ flavor, the calibration and
    evaluation data, the prepared FP32 graph and the output folder."""
    check_config(config)
    out = Path(out) if out else default_out(config, kind)
    check_output_dir(out)                              # before any model export or calibration
    check_output_dir(config.cache_dir, empty=False)
    model = resolve_model(config.model, config.preprocess, parse_input_size(config.input_size))
    flavor = config.qdq_flavor or default_flavor(config.backend)
    data = plan_data(config.dataset, config.data_dir, model.preprocess, config.samples, config.seed,
                     config.eval_data_dir, config.eval_samples)
    prepared = prepared_model(model)
    check_model_classes(model, data.calibration, prepared)
    return RunSetup(model, flavor, data, prepared, out)


def check_model_classes(model: Model, dataset, prepared: onnx.ModelProto) -> None:
    """A classifier whose class count is not the dataset's label count would score 0% top-1 and
    say nothing: refused in one line before any calibration."""
    from calib.data.classes import imagenet_classes

    source = dataset.source
    labels = len(getattr(source, "class_names", None) or imagenet_classes())
    check_classes(model, labels, source.description, prepared=prepared)
