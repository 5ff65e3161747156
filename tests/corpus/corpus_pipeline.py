"""The conformance pipeline, step by step, as a user's export goes through calib.

export (legacy or dynamo, the walkthrough's dynamic axes) -> calib's intake (resolve_model with
--input-size 64, prepared_model: fixed 64x64 with a dynamic batch, opset >= 13, BatchNorm and shape
subgraphs folded by ONNX Runtime's basic level) -> one calibration pass (calib.passes.observe_pass) serving
minmax and entropy -> both Q/DQ flavors -> ONNX Runtime.

The SQNR floor. Each quantized tensor t adds noise: rounding, step s_t = amax_t/127 with the error
uniform over a step (power s_t^2/12), and clipping, the power of |x| - amax_t above amax_t; both
are measured on the calibration histogram of |x| and taken relative to the tensor's power E[x^2]
(r_t). Per-channel int8 weights add r_w = mean(s_c^2/12) / E[w^2] the same way. Independent noises
add in power, and a normalised network (BatchNorm, LayerNorm) carries a relative error to its
logits with a gain we bound by AMPLIFICATION_DB (x4 in power). So

    logits SQNR >= -10 log10(sum_t r_t + sum_w r_w) - AMPLIFICATION_DB

is what the ranges a calibrator chose allow. The floor is evaluated on the calibration images
themselves: it is derived from their statistics (whether 16 images' ranges generalise is a question
of calibration sample size, not of placement). Using int8's step for the ort flavor's uint8 tensors
(which have up to half that step) and the uniform rounding model for the exact zeros of ReLU
outputs only overstate the noise. What the floor catches: a Q/DQ the ranges do not explain (a
wrong tensor, scale, zero point or axis, a folded ReLU that was needed, an integer tensor).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from calib.calibrators import TensorStatistics, get_calibrator
from calib.passes import observe_pass
from calib.data import Dataset
from calib.models import prepared_model, resolve_model
from calib.onnx_io import load_model, ort_session
from calib.quantize import Plan, flavor_names, get_flavor, plan_for, quantize_model
from calib.quantize.graph import FLOAT_TYPES, GraphIndex
from calib.stats.sqnr import sqnr

SIZE = 64
CALIBRATORS = ("minmax", "entropy")
EXPORTERS = ("legacy", "dynamo")
AMPLIFICATION_DB = 6.0


def export(model, path: Path, exporter: str, fixed_size: bool) -> Path:
    """torch.onnx.export as NVIDIA's TensorRT walkthrough does it (dynamic batch, height, width)."""
    import torch

    axes = {"input": {0: "batch_size"}} if fixed_size else {"input": {0: "batch_size", 2: "height", 3: "width"}}
    dynamo = exporter == "dynamo"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The dynamo exporter starts at opset 18 (asking for 17 only adds a failing down-conversion).
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, opset_version=18 if dynamo else 17,
                          dynamo=dynamo, **({"verbose": False} if dynamo else {}))
    return path


def activation_noise(stats: TensorStatistics, tensor: str, amax: float) -> float:
    """Relative noise power int8 quantization at `amax` adds to `tensor` (see module docstring)."""
    counts, edges = stats.histogram(tensor)
    counts = counts.astype(np.float64)
    mid = (edges[:-1] + edges[1:]) / 2
    n = counts.sum()
    signal = float((counts * mid ** 2).sum() / n) if n else 0.0
    if signal <= 0:
        return 0.0
    clipped = float((counts * np.clip(mid - amax, 0, None) ** 2).sum() / n)
    return ((amax / 127) ** 2 / 12 + clipped) / signal


def weight_noise(w: np.ndarray, axis: int) -> float:
    """Relative noise power of per-channel symmetric int8 weights."""
    w = w.astype(np.float64)
    reduce = tuple(a for a in range(w.ndim) if a != axis)
    step = np.abs(w).max(axis=reduce, keepdims=True) / 127 if reduce else np.abs(w) / 127
    signal = float((w ** 2).sum())
    return float((np.broadcast_to(step ** 2 / 12, w.shape)).sum() / signal) if signal > 0 else 0.0


def sqnr_floor(stats: TensorStatistics, qdq: onnx.ModelProto, plan: Plan, amax: dict[str, float]) -> float:
    """The logits SQNR (dB) the ranges of `qdq` allow (module docstring)."""
    total = sum(activation_noise(stats, n.input[0], amax[n.input[0]])
                for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    total += sum(weight_noise(plan.index.initializer_array(node.input[1]), axis) for node, axis in plan.weights)
    return -10 * math.log10(total) - AMPLIFICATION_DB if total > 0 else math.inf


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    inits = {i.name for i in model.graph.initializer}
    constants = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    # Q: activation Q/DQ pairs; constants: int8 weights (and the ort flavor's int32 biases).
    return {"Q": ops.count("QuantizeLinear"), "DQ": ops.count("DequantizeLinear"), "constants": constants}


def quantized_tensor_types(qdq: onnx.ModelProto, reference: GraphIndex) -> dict[str, int | None]:
    """Element type, in the FP32 model, of every tensor a QuantizeLinear reads."""
    return {n.input[0]: reference.elem_type(n.input[0]) for n in qdq.graph.node if n.op_type == "QuantizeLinear"}


def not_float(names, index: GraphIndex) -> list[str]:
    return [t for t in names if index.elem_type(t) not in FLOAT_TYPES]


@dataclass
class Result:
    arch: str
    exporter: str
    raw: onnx.ModelProto
    prepared: onnx.ModelProto
    export_seconds: float
    calibration_seconds: float
    images: np.ndarray
    fp32: np.ndarray
    amax: dict = field(default_factory=dict)     # calibrator -> tensor -> amax
    models: dict = field(default_factory=dict)   # (calibrator, flavor) -> Q/DQ model
    logits: dict = field(default_factory=dict)   # (calibrator, flavor) -> logits on `images`
    sqnr_db: dict = field(default_factory=dict)  # (calibrator, flavor) -> logits SQNR vs FP32
    floor_db: dict = field(default_factory=dict)  # (calibrator, flavor) -> sqnr_floor
    counts: dict = field(default_factory=dict)   # flavor -> Q/DQ counts
    trt: dict = field(default_factory=dict)      # flavor -> TensorRT-RTX build result (conftest)


def run(arch: str, exporter: str, path: Path, export_seconds: float, calibration: Dataset,
        images: np.ndarray) -> Result:
    """Calibrate `path` on `calibration` (whose decoded images are `images`), build both flavors
    from both calibrators and run everything in ONNX Runtime on `images`."""
    import time

    raw = load_model(path)
    prepared = prepared_model(resolve_model(str(path), "torchvision", SIZE))  # calib's own intake
    plans = {f: plan_for(prepared, f) for f in flavor_names()}
    need = list(dict.fromkeys(t for p in plans.values() for t in p.activations))
    stats = TensorStatistics(histogram=True)
    calibrators = {name: get_calibrator(name, stats) for name in CALIBRATORS}
    start = time.perf_counter()
    observe_pass(prepared, calibration, stats, batch_size=8, workers=0, progress=None, tensors=need)
    amax = {name: {t: r.amax for t, r in c.compute().items()} for name, c in calibrators.items()}
    seconds = time.perf_counter() - start
    fp32 = ort_session(prepared, "basic").run(None, {"input": images})[0]
    result = Result(arch, exporter, raw, prepared, export_seconds, seconds, images, fp32, amax)
    for name in CALIBRATORS:
        for flavor in flavor_names():
            qdq, _ = quantize_model(prepared, amax[name], flavor)
            # ort: the integer kernels production runs; tensorrt: the Q/DQ as written (simulated).
            level = "all" if get_flavor(flavor).default_backend == "ort" else "basic"
            logits = ort_session(qdq, level).run(None, {"input": images})[0]
            result.models[name, flavor] = qdq
            result.logits[name, flavor] = logits
            result.sqnr_db[name, flavor] = sqnr(fp32, logits)
            result.floor_db[name, flavor] = sqnr_floor(stats, qdq, plans[flavor], amax[name])
            result.counts[flavor] = qdq_counts(qdq)
    return result
