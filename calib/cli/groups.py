"""Option groups: the command line built from parts, as Polygraphy builds its tools from argument
groups (polygraphy/tools/args: `ModelArgs`, `DataLoaderArgs`, `TrtConfigArgs`, ...). Each group
declares its options once (names, help, checks; the default by reference to the library,
`calib.cli.defaults`) and turns what was parsed into its part of the configuration
(`config()`: keyword arguments of `calib.session.RunConfig`). A command takes a group as a
keyword parameter annotated with the group's class:

    @app.command()
    @with_groups
    def calibrate(*, model: ModelArgs, data: DataArgs = DataArgs.without("eval_data_dir", "eval_samples"), ...):
        outcome, plan = calibrate_only(run_config(model, data, ...))

`with_groups` puts the group's options where the parameter stands (so `--help` lists them
together, in the group's order) and hands the function the parsed group, with one attribute per
option (`model.input_size`). A group given as a default takes only some of its options, as
Polygraphy's groups take constructor flags for the tools that need less; the options it leaves out
keep the library's default.

Nothing here imports a heavy library: `calib --help` builds every command's options.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Optional

import typer
from typer.models import OptionInfo

from calib.cli import defaults
from calib.cli.defaults import Default

REQUIRED = ...   # typer's marker for an option without a default


@dataclass(frozen=True)
class Opt:
    """One option: its Python type (None: the annotation of the parameter it is the default of),
    its typer declaration and its default: a reference to the library (`defaults.config()`, the
    RunConfig field named like the option, unless told; `defaults.param(...)`, a command
    function's parameter), a literal for an option that exists only on the command line (None:
    not given), or REQUIRED."""
    type: Any
    info: OptionInfo
    default: Any = defaults.config()

    def default_value(self, name: str) -> Any:
        return self.default.value(name) if isinstance(self.default, Default) else self.default

    def parameter(self, name: str, annotation: Any = None) -> inspect.Parameter:
        """The keyword parameter typer reads this option from."""
        kind = self.type if self.type is not None else annotation
        if kind is None or kind is inspect.Parameter.empty:
            raise TypeError(f"option '{name}' has no type")
        info = self.info
        if is_float(kind):   # every float option: nan and inf are refused where it is parsed
            info = copy.copy(info)
            info.callback = _chain(finite, info.callback)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=self.default_value(name),
                                 annotation=Annotated[kind, info])


def is_float(kind: Any) -> bool:
    """Whether an option of type `kind` (float or Optional[float]) takes a float: the options that
    `finite` guards."""
    return kind is float or (typing.get_origin(kind) in (typing.Union, types.UnionType)
                             and float in typing.get_args(kind))


def finite(value: Optional[float]) -> Optional[float]:
    """Refuse nan and inf for a float option: `--speed-seconds inf` would time forever and a nan
    budget or percentile compares false with every bound, so a range check alone lets it through."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, not {value}")
    return value


def _chain(first: Callable[[Any], Any], then: Callable[..., Any] | None) -> Callable[[Any], Any]:
    """`first`, then the option's own callback (if it has one) on what `first` returned."""
    if then is None:
        return first
    return lambda value: then(first(value))


def opt(*decls: Any, default: Any = defaults.config(), **typer_options: Any) -> Opt:
    """An option declaration: `opt(int, "--samples", help=...)` in a group; as the default of a
    command's own parameter the type may be left to the parameter's annotation
    (`images: int = opt("--images", default=..., help=...)`)."""
    type_ = None
    if decls and not isinstance(decls[0], str):
        type_, decls = decls[0], decls[1:]
    return Opt(type_, typer.Option(*decls, **typer_options), default)


class Group:
    """A set of options and the part of the configuration they build.

    A subclass declares `options` (parameter name -> `Opt`; the name is also the RunConfig field
    it fills, unless `config()` says otherwise). An instance is a selection of those options (all
    by default); `parse()` gives a copy holding the parsed values as attributes."""

    options: ClassVar[dict[str, Opt]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        clash = [name for name in cls.options if hasattr(Group, name) or name == "names"]
        if clash:
            raise TypeError(f"{cls.__name__}: option names {clash} shadow Group's own attributes")

    def __init__(self, *only: str) -> None:
        unknown = [name for name in only if name not in self.options]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no option {', '.join(unknown)}")
        self.names = tuple(name for name in self.options if not only or name in only)

    @classmethod
    def without(cls, *names: str) -> "Group":
        """The group less the options `names` (they keep the library's default)."""
        unknown = [name for name in names if name not in cls.options]
        if unknown:
            raise ValueError(f"{cls.__name__} has no option {', '.join(unknown)}")
        kept = [name for name in cls.options if name not in names]
        if not kept:
            raise ValueError(f"{cls.__name__} without every option is no group")
        return cls(*kept)

    def parameters(self) -> list[inspect.Parameter]:
        return [self.options[name].parameter(name) for name in self.names]

    def parse(self, values: dict[str, Any]) -> "Group":
        """A copy of this group holding the parsed `values` (one per option it takes)."""
        parsed = copy.copy(self)
        for name in self.names:
            setattr(parsed, name, values[name])
        return parsed

    def config(self) -> dict[str, Any]:
        """This group's part of RunConfig's keyword arguments: its options under their names."""
        return {name: getattr(self, name) for name in self.names}

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.names if hasattr(self, name))
        return f"{type(self).__name__}({values or ', '.join(self.names)})"


def with_groups(func: Callable[..., Any]) -> Callable[..., Any]:
    """Expand each keyword parameter of `func` annotated with a Group class into that group's
    options (the parameter's default, a group instance, selects some of them); `func` is called
    with the parsed groups. A parameter whose default is an `Opt` (a command's own option) takes
    its default from there; other parameters are typer's as usual."""
    signature = inspect.signature(func, eval_str=True)
    groups: dict[str, Group] = {}
    options: dict[str, Opt] = {}     # every option declared through an Opt, by parameter name
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        cls = p.annotation
        if isinstance(cls, type) and issubclass(cls, Group):
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"{func.__name__}: group parameter '{p.name}' must be keyword-only (after *)")
            group = p.default if isinstance(p.default, Group) else cls()
            if not isinstance(group, cls):
                raise TypeError(f"{func.__name__}: '{p.name}' is a {cls.__name__}, not a {type(group).__name__}")
            groups[p.name] = group
            params.extend(group.parameters())
            options.update({name: group.options[name] for name in group.names})
        elif isinstance(p.default, Opt):
            params.append(p.default.parameter(p.name, p.annotation).replace(kind=p.kind))
            options[p.name] = p.default
        else:
            params.append(p)
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise TypeError(f"{func.__name__}: option '{p.name}' is declared twice")
        seen.add(p.name)
    params.sort(key=lambda p: p.kind)   # positional first, as a signature needs; the order within a kind is kept

    @functools.wraps(func)
    def wrapper(**values: Any) -> Any:
        parsed = {name: group.parse({o: values.pop(o) for o in group.names}) for name, group in groups.items()}
        return func(**values, **parsed)

    wrapper.__signature__ = signature.replace(parameters=params)   # what typer reads the options from
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    wrapper.groups, wrapper.options = groups, options   # for tests and tools that read a command's options
    return wrapper


def run_config(*groups: Group, **fields: Any):
    """The RunConfig the parsed `groups` (and any further `fields`) describe; an option a command
    does not take keeps RunConfig's default."""
    from calib.session.config import RunConfig

    values: dict[str, Any] = {}
    for part in [g.config() for g in groups] + [fields]:
        twice = set(values) & set(part)
        if twice:
            raise TypeError(f"RunConfig fields given twice: {', '.join(sorted(twice))}")
        values.update(part)
    return RunConfig(**values)


# --- the groups ------------------------------------------------------------------------------------


class ModelArgs(Group):
    """Which model, and how its images are prepared (Polygraphy: ModelArgs)."""
    options = {
        "model": opt(str, "--model", help="efficientnet_lite0/1/2 or a path to an ONNX model (one image input; any "
                                          "inputs with --dataset npz or a dataset reader)"),
        "task": opt(str, "--task", help="what the model's outputs are: classify, detect, segment or generic "
                                        "(auto: classify for one output of class scores, else generic)"),
        "preprocess": opt(Optional[str], "--preprocess",
                          help="preprocessing preset: efficientnet-lite, torchvision or letterbox (YOLO: keep the "
                               "aspect ratio, pad with gray 114, RGB in [0, 1])"),
        "input_size": opt(Optional[str], "--input-size",
                          help="height and width for a model with dynamic H/W: 224 or 256x256 (default: the "
                               "preprocessing preset's size)"),
        "input_shape": opt(list[str], "--input-shape",
                           help="NAME=DxD: the dimensions after the batch axis of input NAME, for its dynamic ones "
                                "(repeatable; input_ids=128 also sizes the same named dimension of attention_mask; "
                                "images=3x640x640 is --input-size 640)"),
        "mean": opt(Optional[str], "--mean",
                    help="per-channel mean R,G,B replacing the preset's, on the [0, 1] pixel scale as torchvision's "
                         "Normalize (ImageNet: 0.485,0.456,0.406); enters the cache key"),
        "std": opt(Optional[str], "--std",
                   help="per-channel std R,G,B replacing the preset's, the same [0, 1] scale (ImageNet: "
                        "0.229,0.224,0.225); the model sees (pixel/255 - mean) / std"),
        "channel_order": opt(str, "--channel-order",
                             help="rgb, or bgr for a model trained on OpenCV's BGR images (--mean and --std stay "
                                  "R,G,B); enters the cache key"),
    }


# The options of ModelArgs that shape the pixels only: build and cache verify read no images.
NORMALISATION = ("mean", "std", "channel_order")


class LabelArgs(Group):
    """Ground truth for the task metric of `calib run` (calib.metrics): without it a detector or a
    segmenter is judged against FP32's own outputs."""
    options = {
        "labels": opt(Optional[str], "--labels",
                      help="ground truth: a COCO JSON file for --task detect (images matched by file name), a folder "
                           "of masks <image stem>.png or .npy for --task segment (the image's size, or the output's); "
                           "the metric is then against it (reference: labels), not against FP32"),
        "decoder": opt(str, "--decoder",
                       help="how --task detect reads the outputs: ultralytics (one (N, 4+C, A) output), boxes-scores "
                            "(SSD/RetinaNet: boxes and scores), or a plug-in of group calib.metrics.decoders (default "
                            "auto: by the outputs' layout)"),
        "decoder_params": opt(list[str], "--decoder-param",
                              help="KEY=VALUE for the decoder, repeatable: transposed=true ((N, A, 4+C)), "
                                   "box_format=yxyx|cxcywh, normalized=true, activation=sigmoid|softmax, background=0"),
    }


class DataArgs(Group):
    """The images: which dataset, how many for calibration and for evaluation, the seed of the
    split, the decoding processes (Polygraphy: DataLoaderArgs)."""
    options = {
        "dataset": opt(Optional[str], "--dataset",
                       help="demo (embedded photos), imagenet-val, images (any folder of images, searched "
                            "recursively; its ground truth, if any, from --labels), npz (a folder of .npz files keyed "
                            "by input name, one sample or one batch each; .npy for a one-input model), hf:<name-or-path>, "
                            "or a dataset reader plug-in (entry-point group calib.datasets; it gets --data-dir) (default: "
                            "imagenet-val when --data-dir is given, else demo; demo and hf: take no --data-dir or "
                            "--eval-data-dir)"),
        "data_dir": opt(Optional[str], "--data-dir",
                        help="the folder of imagenet-val (which it implies; default $CALIB_IMAGENET_VAL), of images "
                             "or of .npz files"),
        "samples": opt(Optional[int], "--samples", min=1,
                       help="calibration images (default: half of the folder, the rest evaluating, at most 500; "
                            "all of it, at most 500, with --eval-data-dir, for calibrate and for the demo)"),
        "eval_data_dir": opt(Optional[str], "--eval-data-dir", help="separate evaluation folder"),
        "eval_samples": opt(Optional[int], "--eval-samples", min=1, help="limit evaluation images"),
        "seed": opt(int, "--seed", min=0, help="seed of the calibration/evaluation split"),
        "workers": opt(Optional[int], "--workers", min=0,
                       help="decoding processes (0: decode in this process); with --gpu-decode pil, per GPU"),
    }


def calibrator_params(percentile: float | None) -> dict:
    return {} if percentile is None else {"percentile": percentile}


class CalibratorArgs(Group):
    """The calibration algorithm, its parameter, and whether a matching cache is reused
    (Polygraphy: TrtConfigArgs' calibration options)."""
    options = {
        "calibrator": opt(str, "--calibrator",
                          help="minmax (default, as ModelOpt and ONNX Runtime), entropy (TensorRT "
                               "EntropyCalibration2), percentile, mse, or a plug-in"),
        # None: not given; the percentile calibrator's own default applies (calib.calibrators).
        "percentile": opt(Optional[float], "--percentile", default=None,
                          help="percentile calibrator: the percentile of |x|, in (0, 100] (default 99.99); refused "
                               "when no calibrator used takes it"),
        "recalibrate": opt(bool, "--recalibrate", help="ignore a matching cache and calibrate again"),
    }

    def config(self) -> dict[str, Any]:
        values = super().config()
        if "percentile" in values:
            values["calibrator_params"] = calibrator_params(values.pop("percentile"))
        return values


class QuantizeArgs(Group):
    """Where the INT8 model runs and how it is quantized: the backend, the Q/DQ flavor, bias
    correction."""
    options = {
        "backend": opt(str, "--backend", help="ort (ONNX Runtime CPU), tensorrt or tensorrt-rtx"),
        "qdq_flavor": opt(Optional[str], "--qdq-flavor", help="tensorrt or ort (default: the one --backend builds)"),
        "bias_correction": opt(bool, "--bias-correction/--no-bias-correction",
                               help="correct biases for the mean shift weight quantization causes"),
        "exclude": opt(list[str], "--exclude", help="leave the nodes whose name matches this regex float "
                                                    "(repeatable; the heads stay float anyway)"),
        "exclude_ops": opt(list[str], "--exclude-op", help="leave every node of this op type float (repeatable)"),
    }


class BatchArgs(Group):
    """Images per batch of the evaluation and of the calibration pass."""
    options = {
        "batch_size": opt(int, "--batch-size", min=1, help="images per evaluation batch"),
        "calib_batch_size": opt(int, "--calib-batch-size", min=1,
                                help="images per calibration batch (memory: ~30 MB of activations per image for "
                                     "EfficientNet-Lite0)"),
    }


class OutputArgs(Group):
    """Where results go: the cache folder, the report folder, and whether a file calib did not
    write may be replaced (`calib.fsutil.check_output_file`)."""
    options = {
        "cache_dir": opt(str, "--cache-dir", help="folder of calibration caches"),
        "out": opt(Optional[str], "--out", help="report folder (default runs/<time>-<model>-<what>)"),
        "overwrite": opt(bool, "--overwrite", default=defaults.param("calib.fsutil", "check_output_file"),
                         help="replace an existing output file calib did not write"),
    }


class DeviceArgs(Group):
    """Where the calibration pass and the evaluation run, and how images are decoded on a GPU."""
    options = {
        "device": opt(str, "--device",
                      help="cpu (default), cuda, cuda:N, cuda:0,1 (several GPUs) or auto: where the calibration pass "
                           "and the evaluation run (GPU: nvJPEG decode and ONNX Runtime's CUDA provider; pip install "
                           "'calib[gpu]')"),
        "gpu_decode": opt(str, "--gpu-decode",
                          help="on a GPU: nvjpeg (default; nvJPEG decode and resize on the GPU, pixels about one level "
                               "from Pillow's) or pil (the CPU path's Pillow preprocessing in worker processes: its "
                               "pixels bit for bit, and its cache key)"),
    }


class BudgetArgs(Group):
    """An accuracy budget: the most damaging layers stay in float until it is met (calib.restore)."""
    options = {
        "max_drop": opt(Optional[float], "--max-drop",
                        help="accuracy budget: largest drop as a fraction (0.002 = 0.2 points) of top-1 for a "
                             "classifier, of the task metric otherwise (mAP@0.5:0.95, mIoU, argmax agreement); the "
                             "most damaging layers stay in float until it is met"),
        "min_agreement": opt(Optional[float], "--min-agreement",
                             help="accuracy budget: smallest top-1 agreement with FP32 (0.995 = 99.5%)"),
    }


class ReportArgs(Group):
    """What `calib run`'s report holds beyond the accuracy: the HTML figures and the speed figures."""
    options = {
        "html": opt(bool, "--html/--no-html", help="also write report.html (histograms, per-layer SQNR)"),
        "speed_seconds": opt(float, "--speed-seconds", min=0.0,
                             help="seconds of timing per model and batch size for the report's speed figures "
                                  "(0: skip)"),
    }


class TensorRTArgs(Group):
    """TensorRT build options (Polygraphy: TrtConfigArgs), for calib.commands.build and bench, which
    refuse them for a backend that builds no engine; None: not given, the backend decides."""
    options = {
        "min_batch": opt(Optional[int], "--min-batch", default=None, min=1, help="TensorRT profile: smallest batch"),
        "opt_batch": opt(Optional[int], "--opt-batch", default=None, min=1, help="TensorRT profile: batch to tune for"),
        "max_batch": opt(Optional[int], "--max-batch", default=None, min=1, help="TensorRT profile: largest batch"),
        "workspace_mib": opt(Optional[int], "--workspace-mib", default=None, min=1, help="TensorRT workspace limit"),
        "timing_cache": opt(Optional[str], "--timing-cache", default=None,
                            help="TensorRT timing cache file, reused across builds"),
        "compute_capability": opt(Optional[str], "--compute-capability", default=None,
                                  help="TensorRT-RTX: the GPU generation to build for: 86, 89 (default) or 120, "
                                       "also written 8.6, 8.9, 12.0"),
    }


class JsonArgs(Group):
    """Machine-readable output instead of a table."""
    options = {"as_json": opt(bool, "--json", default=False, help="machine-readable output")}
