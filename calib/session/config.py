"""The run configuration of every command that touches a model and images (`RunConfig`), and the
checks that need neither the model nor the images, made first: a typo must not cost a model
export, a calibration pass or a sensitivity ranking before it fails. Where work runs is decided
by `calib.placement` from the options handed to it once (`check_placement`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from calib.cache import CacheStore
from calib.data.decoders import DECODERS as GPU_DECODERS   # --gpu-decode
from calib.errors import CalibError
from calib.fsutil import check_output_dir
from calib.models import ZOO, parse_input_shapes
from calib.placement import Launch, Placement, check_placement, resolve_placement


@dataclass
class RunConfig:
    """The options of `calib run` (and of compare/sensitivity, which ignore what they do not use)."""
    model: str = "efficientnet_lite0"
    preprocess: str | None = None
    input_size: str | None = None        # H and W for a model with dynamic H/W ("224", "256x256")
    input_shape: tuple[str, ...] = ()    # NAME=DxD: the dimensions after an input's batch axis (--input-shape)
    task: str = "auto"                   # classify, detect, segment, generic; auto: classify for class scores
    mean: str | None = None              # --mean R,G,B on the [0, 1] scale (torchvision's Normalize); None: the preset's
    std: str | None = None               # --std R,G,B, the same scale
    channel_order: str = "rgb"           # the model's input channels: rgb, or bgr (OpenCV-trained models)
    labels: str | None = None            # ground truth of the task metric: a COCO JSON file (detect), a mask folder (segment)
    decoder: str = "auto"                # how --task detect reads the outputs: a registered decoder (calib.metrics.decode)
    decoder_params: tuple[str, ...] = ()  # KEY=VALUE for that decoder (--decoder-param transposed=true)
    exclude: tuple[str, ...] = ()        # node-name regexes left float (--exclude), beside the heads
    exclude_ops: tuple[str, ...] = ()    # op types left float (--exclude-op)
    dataset: str | None = None           # None: imagenet-val when data_dir is given, else demo (__post_init__)
    data_dir: str | None = None
    samples: int | None = None           # None: half of the folder (the rest evaluates), at most 500 (calib.data.plan)
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

    def __post_init__(self) -> None:
        """A folder given without a dataset is an ImageNet-layout folder: `--data-dir X` alone used to
        run the 5-photo demo and ignore X."""
        if self.dataset is None:
            self.dataset = "imagenet-val" if self.data_dir else "demo"
        self.exclude, self.exclude_ops = tuple(self.exclude), tuple(self.exclude_ops)   # the CLI gives lists
        self.input_shape = tuple(self.input_shape)
        self.decoder_params = tuple(self.decoder_params)

    def placement_rules(self) -> dict:
        """The user's exclusions as `calib.quantize.quantize_model` and its siblings take them."""
        return {"exclude": tuple(self.exclude), "exclude_ops": tuple(self.exclude_ops)}

    def placement(self) -> Placement:
        """Where the passes run: the CPU or CUDA devices (auto: a GPU only for the ort backend,
        whose CUDA provider runs there; TensorRT runs on its own); under torchrun, this process's
        device in a job whose processes share the passes (`calib.placement.Launch`)."""
        return resolve_placement(self.device, self.backend, Launch.from_env())

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


def check_numbers(config: RunConfig) -> None:
    """Every float field finite and the seed a seed, for library callers as for the command line
    (whose option groups refuse these where they are parsed): an infinite --speed-seconds timed
    forever, a nan budget compared false with every bound, and numpy refuses a negative seed only
    after the model is prepared."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise CalibError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")
    if config.seed < 0:
        raise CalibError(f"--seed must be at least 0, got {config.seed}")
    if config.speed_seconds < 0:
        raise CalibError(f"--speed-seconds must be at least 0, got {config.speed_seconds}")


LABELLED_TASKS = {"detect": "a COCO JSON file", "segment": "a folder of masks (<image stem>.png or .npy)"}


def check_labels_option(config: RunConfig, task: str | None = None) -> None:
    """--labels: an existing path, for a task that is judged against labels (detect: a COCO JSON
    file; segment: a folder of masks). `task`: the model's task once resolved (auto becomes
    classify or generic); before that, the task the user named."""
    if config.labels is None:
        return
    task = task or config.task
    path = Path(config.labels).expanduser()
    if task == "generic":
        raise CalibError("--task generic is judged against FP32's own outputs: it takes no --labels "
                         "(labels are for --task detect, a COCO JSON file, or --task segment, a folder of masks)")
    if task == "classify":
        raise CalibError("--labels is for --task detect (a COCO JSON file) or segment (a folder of masks): a classifier "
                         "reads its labels from the dataset (imagenet-val's class folders, hf:'s label column)")
    if not path.exists():
        raise CalibError(f"--labels {path}: no such file or folder")
    if task == "detect" and not path.is_file():
        raise CalibError(f"--labels {path} is a folder: --task detect takes {LABELLED_TASKS['detect']}")
    if task == "segment" and not path.is_dir():
        raise CalibError(f"--labels {path} is a file: --task segment takes {LABELLED_TASKS['segment']}")


def metric_params(config: RunConfig, task: str) -> dict:
    """What `calib.metrics.get_metric(task)` takes from the options: for detect, the decoder
    (--decoder, "auto": by the outputs' layout) and its parameters (--decoder-param KEY=VALUE, the
    value read as JSON where it parses: true, 3, 0.5, "xyxy")."""
    if task != "detect":
        if config.decoder != "auto" or config.decoder_params:
            raise CalibError(f"--decoder and --decoder-param read a detector's outputs: --task {task} has no decoder")
        return {}
    import json

    params = {}
    for item in config.decoder_params:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CalibError(f"--decoder-param wants KEY=VALUE (transposed=true, background=0), not '{item}'")
        try:
            params[key.strip()] = json.loads(value)
        except ValueError:
            params[key.strip()] = value
    return {"decoder": config.decoder, "decoder_params": params} if config.decoder != "auto" or params else {}


def config_model(config: RunConfig, arrays: bool | None = None):
    """The model `config` names (--model, --preprocess, --input-size, --input-shape, --task): fed
    named arrays when its dataset is arrays (npz, a dataset reader: `arrays`), images otherwise
    (`arrays=None`, commands that read no data: images for a model with one image input), its
    image preprocessing with --mean, --std and --channel-order applied
    (`calib.data.transforms.normalised`): the one place every command resolves it, so
    calibration, evaluation and the cache key see the same."""
    from dataclasses import replace

    from calib.data.transforms import normalised
    from calib.models import parse_input_size, resolve_model

    model = resolve_model(config.model, config.preprocess, parse_input_size(config.input_size), config.task,
                          parse_input_shapes(config.input_shape), arrays)
    if model.arrays:
        given = [flag for flag, v in (("--mean", config.mean), ("--std", config.std),
                                      ("--channel-order", config.channel_order if config.channel_order != "rgb" else None))
                 if v is not None]
        if given:
            raise CalibError(f"{' and '.join(given)} normalise images: {model.name} is fed named arrays, taken as "
                             f"they are")
        return model
    pre = normalised(model.preprocess, config.mean, config.std, config.channel_order)
    return model if pre is model.preprocess else replace(model, preprocess=pre)


def check_config(config: RunConfig, calibrators: Sequence[str] | None = None,
                 out: Path | None = None) -> Placement:
    """Every option that can be checked without the model or the images, checked first: a typo
    must not cost a model export, a calibration pass or a sensitivity ranking before it fails.
    `calibrators`: the ones the command uses (default: `config.calibrator`; compare: its list);
    `out`: the output folder a command will write (checked apart from the cache folder).
    Returns where the run goes (checked usable here).

    The options' own values are checked here first; then each name and setting goes to the layer
    that owns it (the dataset and its normalisation, the registries, the folders, the devices, the
    budget)."""
    from calib.backends import backend_class
    from calib.calibrators.registry import check_params
    from calib.data.plan import check_dataset_options
    from calib.data.transforms import check_normalisation
    from calib.quantize import get_flavor
    from calib.stats.budget import Budget

    store = config.cache_store()
    check_values(config)
    check_dataset_options(config.dataset, config.data_dir, config.eval_data_dir)
    check_normalisation(config.mean, config.std, config.channel_order)
    backend_class(config.backend)   # unknown names fail here, naming the choices
    if config.qdq_flavor is not None:
        get_flavor(config.qdq_flavor)
    check_params(config.calibrator_params, list(calibrators) if calibrators is not None else [config.calibrator])
    if out is not None:
        check_output_dir(out, apart_from={"--cache-dir": config.cache_dir})
    # Reusing a cache only reads: write access is asked for where one will be saved.
    store.check(write=config.recalibrate or not store.holds_caches())
    placement = check_placement(config.device, config.backend, config.gpu_decode)
    if config.max_drop is not None or config.min_agreement is not None:
        # The figure is the judge's, known once the model's task is: the run's judge makes the budget in it.
        Budget(config.max_drop, config.min_agreement, what="top-1 or the task metric")
    return placement


def check_values(config: RunConfig) -> None:
    """The options' own values: finite numbers, --labels for a task judged against labels and an
    existing path, counts of at least one, a known decoder, --input-shape's syntax."""
    check_numbers(config)
    check_labels_option(config)
    if config.samples is not None and config.samples < 1:
        raise CalibError(f"--samples must be at least 1, got {config.samples}")
    if config.eval_samples is not None and config.eval_samples < 1:
        raise CalibError(f"--eval-samples must be at least 1, got {config.eval_samples}")
    if config.batch_size < 1 or config.calib_batch_size < 1:
        raise CalibError("batch sizes must be at least 1")
    if config.gpu_decode not in GPU_DECODERS:
        raise CalibError(f"--gpu-decode must be one of {', '.join(GPU_DECODERS)}, not '{config.gpu_decode}'")
    parse_input_shapes(config.input_shape)   # a bad spec fails here; the names are checked against the model


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = config.model if config.model in ZOO else Path(config.model).stem
    return Path("runs") / f"{stamp}-{stem}-{kind or config.calibrator}"
