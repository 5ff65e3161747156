"""Signal-to-quantization-noise ratio (dB) between FP32 and INT8 tensors, and the ONNX Runtime
sessions that expose the tensors to compare.

SQNR = 10·log10(Σ x² / Σ (x − y)²) over every element seen (sums accumulate across batches, so
the figure is the same whatever the batch size). Identical tensors give +inf; an all-zero
reference with any error gives -inf.
"""

from __future__ import annotations

import math

import numpy as np
import onnx


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    """SQNR (dB) of `test` against `reference` over all their elements."""
    ref = np.asarray(reference, np.float64)
    err = ref - np.asarray(test, np.float64)
    return sqnr_db(float(np.sum(ref * ref)), float(np.sum(err * err)))


def sqnr_rows(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-row SQNR (dB), e.g. per image of a (N, classes) logits batch."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    err = ref - np.asarray(test, np.float64).reshape(len(reference), -1)
    return np.array([sqnr_db(float(s), float(n)) for s, n in zip((ref * ref).sum(1), (err * err).sum(1))])


class SqnrAccumulator:
    """Signal and noise power per tensor, summed over batches."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, reference: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(reference, np.float32)
        err = ref - np.asarray(test, np.float32)
        # float32 products summed in float64: exact enough, and no float64 copy of the tensor.
        self.signal[name] = self.signal.get(name, 0.0) + float(np.dot(ref.ravel(), ref.ravel()))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.dot(err.ravel(), err.ravel()))

    def result(self) -> dict[str, float]:
        return {name: sqnr_db(self.signal[name], self.noise[name]) for name in self.signal}


def finite_or_none(x: float) -> float | None:
    """JSON has no infinities: +inf (no error at all) and -inf become None."""
    return round(x, 3) if math.isfinite(x) else None


def session(model: onnx.ModelProto | bytes, level: str = "basic", threads: int = 0, arena: bool = True):
    """An ONNX Runtime CPU session (see `calib.onnx_io.ort_session`); "basic" keeps Q/DQ nodes as
    written (simulated quantization)."""
    from calib.onnx_io import ort_session

    return ort_session(model, level, threads, arena)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the float tensors `names` (added after its own outputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in existing:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            existing.add(name)
    return out


def dequantized_name(tensor: str) -> str:
    """The name QDQBuilder gives the DequantizeLinear output of activation `tensor`."""
    return f"{tensor}_DequantizeLinear_Output"


def int8_view(qdq: onnx.ModelProto, tensors: list[str]) -> dict[str, str]:
    """For each FP32 activation tensor, the Q/DQ-model tensor to compare it with.

    We compare the DequantizeLinear output (what the consumers of the tensor actually read in
    INT8: it includes this tensor's own rounding and clipping at the calibrated threshold, so a
    threshold chosen too low or too high shows up right here) where the tensor is quantized, and
    the tensor of the same name otherwise. The float tensor of the same name in the Q/DQ model is
    *not* used for quantized tensors: with ReLU folded into a uint8 quantization (ort flavor)
    it is the pre-ReLU Conv output, which differs from the FP32 tensor of that name by design;
    when such a tensor is not quantized at all (its readers were left in float by a fallback),
    we compare `<tensor>_float`, the ReLU output those float readers read.
    """
    produced = {o for n in qdq.graph.node for o in n.output} | {i.name for i in qdq.graph.input}
    view = {}
    for t in tensors:
        for candidate in (dequantized_name(t), float_name(t), t):
            if candidate in produced:
                view[t] = candidate
                break
    return view


def float_name(tensor: str) -> str:
    """What float readers of a folded-ReLU tensor read in a partially quantized model
    (calib.sensitivity restores the ReLU for them under this name)."""
    return f"{tensor}_float"
