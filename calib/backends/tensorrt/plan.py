"""The build plan: which network flags, builder flags, calibrator, timing cache and
compute-capability target one build uses. The one place where TensorRT products and versions
branch, and it branches on probed features (probe.Features), never on version numbers.

| precision / model           | weak typing exists (TensorRT <= 10)        | strong typing only (TensorRT 11, TensorRT-RTX) |
| fp32                        | no flag                                    | strongly typed                                 |
| fp16 (or fp16=True)         | BuilderFlag.FP16                           | CalibError: convert the ONNX model to FP16     |
| int8, Q/DQ model            | STRONGLY_TYPED network (else INT8 flag)    | strongly typed                                 |
| int8, Q/DQ model, fp16      | weakly typed, INT8 + FP16 flags            | CalibError (as fp16)                           |
| int8, float model + calib.  | BuilderFlag.INT8 + calibrator              | CalibError: build from the Q/DQ model          |

EXPLICIT_BATCH is passed only where implicit-batch networks still exist (Builder.max_batch_size:
TensorRT <= 8); from TensorRT 10 it is deprecated and ignored, and TensorRT-RTX has no such
member. STRONGLY_TYPED is passed only where it is opt-in (weak typing exists); TensorRT 11
ignores it and TensorRT-RTX networks are strongly typed without it.

Where the builder compiles ahead of time for compute-capability targets (TensorRT-RTX), a
target is always set (`compute_capability`, default 89) and the timing-cache APIs are left
alone: they do not affect TensorRT-RTX engines and force a GPU query during an ahead-of-time
build (https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/timing-cache-migration.html).
Precision guidance followed: "use explicit quantization with strong typing; precision-control
build flags are not required and should not be specified"
(https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html);
TensorRT 11 removals: https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
"""

from __future__ import annotations

from dataclasses import dataclass

from calib.errors import CalibError

from .probe import Features

PRECISIONS = ("fp32", "fp16", "int8")
# Targets calib offers for ahead-of-time builds (RTX 30xx Ampere, RTX 40xx Ada, RTX 50xx
# Blackwell): https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/getting-started/support-matrix.html
COMPUTE_CAPABILITIES = (86, 89, 120)
DEFAULT_COMPUTE_CAPABILITY = 89
QDQ_PATH = "build from calib's Q/DQ model (--qdq-flavor tensorrt), which carries calib's scales"


@dataclass(frozen=True)
class BuildPlan:
    network_flags: tuple[str, ...]   # NetworkDefinitionCreationFlag names to pass
    builder_flags: tuple[str, ...]   # BuilderFlag names to set
    strongly_typed: bool             # the network is strongly typed (asked for, or the only mode)
    implicit_int8: bool              # attach a calibrator
    timing_cache: bool               # load/save a timing cache through the builder config
    compute_capability: int | None   # ahead-of-time target (89 = SM89); None: the GPU it builds on
    description: str


def check_compute_capability(value) -> int:
    """`value` as one of COMPUTE_CAPABILITIES, or a one-line CalibError listing them. Text may use
    NVIDIA's notation major.minor ("8.9", as the support matrix and docs/tensorrt.md write it) as
    well as calib's "89"."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if isinstance(value, str):
        major, dot, minor = text.partition(".")
        if dot and major.isdigit() and len(minor) == 1 and minor.isdigit():
            text = major + minor
    if not text.isdigit() or int(text) not in COMPUTE_CAPABILITIES:
        raise CalibError(f"unknown compute capability {value!r} (choose from: "
                         f"{', '.join(map(str, COMPUTE_CAPABILITIES))}); written as NVIDIA does, "
                         f"{', '.join(f'{c // 10}.{c % 10}' for c in COMPUTE_CAPABILITIES)}")
    return int(text)


def _target(features: Features, compute_capability) -> int | None:
    if not features.ahead_of_time:
        if compute_capability is not None:
            raise CalibError(f"{features.display} builds for the GPU it runs on: a compute capability "
                             f"target applies to --backend tensorrt-rtx only")
        return None
    cc = check_compute_capability(DEFAULT_COMPUTE_CAPABILITY if compute_capability is None else compute_capability)
    if cc not in features.compute_capabilities:
        raise CalibError(f"{features.display} has no SM{cc} target (it has: "
                         f"{', '.join(map(str, features.compute_capabilities))})")
    return cc


def plan_build(features: Features, precision: str, qdq: bool, fp16: bool = False,
               calibrator: bool = False, compute_capability=None) -> BuildPlan:
    """Decide one build. `qdq`: the ONNX model has QuantizeLinear/DequantizeLinear nodes.
    `calibrator`: a calibrator or calibration cache was given. `compute_capability`: the
    ahead-of-time target (TensorRT-RTX; default 89)."""
    if precision not in PRECISIONS:
        raise CalibError(f"unknown precision '{precision}' (choose from: {', '.join(PRECISIONS)})")
    name = features.display
    fp16 = fp16 or precision == "fp16"
    if precision != "int8" and qdq:
        raise CalibError(f"the model has Q/DQ nodes: build it with precision int8, not {precision}")
    if precision != "int8" and calibrator:
        raise CalibError("a calibrator or calibration cache applies only to precision int8")
    cc = _target(features, compute_capability)
    network = ("EXPLICIT_BATCH",) if features.implicit_batch and "EXPLICIT_BATCH" in features.network_flags else ()
    timing = features.timing_cache and not features.ahead_of_time
    suffix = f", SM{cc} target" if cc is not None else ""

    def plan(network_flags, flags, strongly_typed, implicit, text) -> BuildPlan:
        return BuildPlan(tuple(network_flags), tuple(flags), strongly_typed, implicit, timing, cc, text + suffix)

    if not features.weak_typing:
        # Strong typing is the only mode: precision comes from the model's own types and Q/DQ
        # nodes; no precision flags and no calibrators exist.
        if fp16:
            raise CalibError(f"{name} has no FP16 builder flag (networks are strongly typed): convert the "
                             f"ONNX model to FP16 first (python -m modelopt.onnx.autocast --onnx_path "
                             f"model.onnx) and build that file")
        if precision == "int8" and (calibrator or not qdq):
            raise CalibError(f"{name} has no implicit INT8 calibration (no calibrators, no BuilderFlag.INT8): "
                             f"{QDQ_PATH}")
        return plan(network, (), True, False,
                    f"{name}: strongly typed, " + ("explicit INT8 from Q/DQ" if qdq else "FP32"))

    if precision == "int8" and qdq:
        if calibrator:
            raise CalibError("the model already has Q/DQ nodes (explicit quantization): "
                             "a calibrator is only for float models")
        if fp16:  # strongly typed networks forbid precision flags: FP16 elsewhere needs weak typing
            return plan(network, ("INT8", "FP16"), False, False,
                        f"{name}: weakly typed, explicit INT8 from Q/DQ, FP16 elsewhere")
        if "STRONGLY_TYPED" in features.network_flags:
            return plan((*network, "STRONGLY_TYPED"), (), True, False,
                        f"{name}: strongly typed, explicit INT8 from Q/DQ")
        return plan(network, ("INT8",), False, False, f"{name}: weakly typed, explicit INT8 from Q/DQ")
    if precision == "int8":
        if not calibrator:
            raise CalibError(f"the model has no Q/DQ nodes: {QDQ_PATH}, or pass a calibration cache "
                             f"(implicit INT8)")
        if not (features.int8_calibrator and "INT8" in features.builder_flags):
            raise CalibError(f"{name} has no INT8 calibrators: {QDQ_PATH}")
        return plan(network, ("INT8", "FP16") if fp16 else ("INT8",), False, True,
                    f"{name}: implicit INT8 with a calibrator" + (", FP16 elsewhere" if fp16 else ""))
    if fp16:
        return plan(network, ("FP16",), False, False, f"{name}: weakly typed, FP16")
    return plan(network, (), False, False, f"{name}: FP32")
