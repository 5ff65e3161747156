"""Accuracy restoration, the ranker: which quantized layers do the damage, ranked by what each
one alone does to the logits.

A *layer* is one op that the Q/DQ flavor quantizes: a weighted op (Conv, Gemm, MatMul) with the
Q/DQ of its activation inputs and its int8 weight (and, in the ort flavor, its int32 bias), or an
op without weights whose inputs the flavor quantizes (Add, GlobalAveragePool ... in the ort
flavor; the residual Add in the tensorrt flavor). Data-movement ops (Reshape, MaxPool ...) are
not layers: they carry their input's scale through unchanged and simply follow their consumers.
Together the layers own every Q/DQ of the model, so "every layer float" is exactly the FP32
model and "every layer quantized" exactly the INT8 model of `quantize_model`.

A layer's Q/DQ is removed *per consumer*: when the layer is float it reads the float tensor
while other (quantized) consumers of the same tensor keep reading its DequantizeLinear output.
A float layer keeps its input float and its weight float together (ONNX Runtime 1.32 miscomputes
DequantizeLinear -> Conv with a float weight under ORT_ENABLE_ALL), so the models run right under
ORT_ENABLE_ALL, which `rank_layers` uses for speed and cross-checks against ORT_ENABLE_BASIC.

Measure: **only that layer quantized**, everything else FP32 (the isolated damage of each
layer), not "only that layer float". Why: (1) each figure is that layer's own error, not
entangled with the 50-odd others, so a deliberately broken layer stands out by tens of dB
while leave-one-out would move the already-noisy full-INT8 logits by a fraction of a dB;
(2) quantization noise of independent layers adds up roughly in power, so the layers with the
largest isolated noise are the ones whose fallback buys the most, which is the order
`calib.restore.search` needs; (3) a single-layer model runs at FP32 speed, so ranking the 60 layers
of EfficientNet-Lite0 on 64 images takes a minute or two on 2 CPU cores.
Ranked by the logits SQNR (dB, lower = more damage); top-1 agreement with FP32 is reported
beside it but is too coarse to rank by (one layer alone rarely flips a prediction).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
import onnx

from calib.backends.ort import OrtRunner
from calib.errors import CalibError, InternalError
from calib.passes import Images, logits as run_logits
from calib.stats.sqnr import finite_or_none, sqnr, sqnr_rows
from calib.tensor import top5
from calib.progress import progress_bar
from calib.quantize import quantizable_layers, quantize_model


# ----------------------------------------------------------------------------- ranking
@dataclass
class LayerSensitivity:
    layer: str
    op_type: str
    position: int
    weighted: bool
    logits_sqnr_db: float | None     # None: identical to FP32 (infinite SQNR)
    agreement: float                 # top-1 agreement with FP32
    top1: float
    worst_image_sqnr_db: float | None


@dataclass
class SensitivityResult:
    measure: str
    images: int
    flavor: str
    fp32_top1: float
    int8: dict                       # every layer quantized: logits SQNR, agreement, top1
    all_float_max_abs_diff: float    # every layer float vs FP32: must be ~0
    rows: list[LayerSensitivity]     # most damaging first
    seconds: float
    basic_fallbacks: list[str] = field(default_factory=list)  # layers re-run under ORT_ENABLE_BASIC

    def ranking(self) -> list[str]:
        return [r.layer for r in self.rows]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ranking"] = self.ranking()
        return d


MEASURE = ("only this layer quantized, every other layer FP32 (isolated damage); ranked by the SQNR "
           "of the logits against FP32, lowest first")


def _score(fp32: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    a, b = top5(fp32)[:, 0], top5(logits)[:, 0]
    rows = sqnr_rows(fp32, logits)
    return {"logits_sqnr_db": finite_or_none(sqnr(fp32, logits)),
            "agreement": float(np.mean(a == b)), "top1": float(np.mean(b == labels)),
            "worst_image_sqnr_db": finite_or_none(float(np.min(rows)))}


def rank_layers(prepared: onnx.ModelProto, amax: dict[str, float], flavor: str, images: Images,
                batch_size: int = 32, layers: Iterable[str] | None = None, weighted_only: bool = False,
                fp32_logits: np.ndarray | None = None, progress: bool = True, check_images: int = 2,
                channel_means: dict[str, list[float]] | None = None, device: str = "cpu",
                rules: dict | None = None) -> SensitivityResult:
    """Sensitivity of each layer on `images` (FP32 logits computed once and shared).

    The single-layer models run under ORT_ENABLE_ALL (3-4x faster than ORT_ENABLE_BASIC on
    CPU: fused Conv+activation, blocked layouts); they only ever hold the pattern ONNX Runtime
    computes right (a quantized layer reads DequantizeLinear input AND weight, a float layer
    float input AND weight). As a guard, each model's logits on the first `check_images` images
    are compared with ORT_ENABLE_BASIC (Q/DQ simulated exactly, no fusion); a model where the two
    disagree (SQNR < 25 dB) is re-run under ORT_ENABLE_BASIC and listed in `basic_fallbacks`.
    On a GPU (`device`, with `images` decoded there) the models run in ONNX Runtime's CUDA
    provider as written (no fusion bug to guard against there: no check).
    """
    def runner(model, level: str = "all"):
        return OrtRunner(model, device=device, level=level, exact=False)

    if device != "cpu":
        check_images = 0
    start = time.perf_counter()
    rules = rules or {}   # the user's exclusions (calib.quantize: exclude, exclude_ops)
    all_layers = quantizable_layers(prepared, flavor, **rules)
    chosen = all_layers
    if layers is not None:
        wanted = set(layers)
        chosen = [layer for layer in all_layers if layer.id in wanted]
    if weighted_only:
        chosen = [layer for layer in chosen if layer.weighted]
    if not chosen:
        raise CalibError("the model has no quantized layer to rank")
    if fp32_logits is None:
        fp32_logits = run_logits(runner(prepared), images, batch_size)
    every = {layer.id for layer in all_layers}
    # The two ends: every layer quantized (the INT8 model), every layer float (must be FP32).
    int8_logits = run_logits(runner(quantize_model(prepared, amax, flavor, channel_means=channel_means,
                                                   quantized_layers=every, **rules)[0]), images, batch_size)
    float_logits = run_logits(runner(quantize_model(prepared, amax, flavor, quantized_layers=set(), **rules)[0]),
                              images, batch_size)
    all_float_diff = float(np.max(np.abs(float_logits - fp32_logits)))
    if all_float_diff > 1e-3 * max(1.0, float(np.max(np.abs(fp32_logits)))):
        raise InternalError(f"the model with every layer float differs from FP32 by {all_float_diff:.3g}")
    check = images.head(check_images)
    rows, basic_fallbacks = [], []
    bar = progress_bar(chosen, desc="sensitivity", unit="layer", enabled=progress)
    for layer in bar:
        data = quantize_model(prepared, amax, flavor, channel_means=channel_means,
                              quantized_layers={layer.id}, **rules)[0].SerializeToString()
        logits = run_logits(runner(data), images, batch_size)
        if check_images > 0 and sqnr(run_logits(runner(data, "basic"), check, batch_size),
                                     logits[:check_images]) < 25.0:
            basic_fallbacks.append(layer.id)
            logits = run_logits(runner(data, "basic"), images, batch_size)
        rows.append(LayerSensitivity(layer.id, layer.op_type, layer.position, layer.weighted,
                                     **_score(fp32_logits, logits, images.labels)))
    bar.close()
    inf = float("inf")
    rows.sort(key=lambda r: (inf if r.logits_sqnr_db is None else r.logits_sqnr_db, r.agreement, r.position))
    fp32_top1 = float(np.mean(top5(fp32_logits)[:, 0] == images.labels))
    return SensitivityResult(MEASURE, len(images), flavor, fp32_top1, _score(fp32_logits, int8_logits, images.labels),
                             all_float_diff, rows, time.perf_counter() - start, basic_fallbacks)
