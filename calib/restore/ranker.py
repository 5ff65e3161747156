"""Accuracy restoration, the ranker: which quantized layers do the damage, ranked by what each
one alone does to the model's outputs (a classifier's logits, every output of any other task).

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

What "damage" is measured on is the scorer's (`calib.restore.score`): for a classifier the
logits SQNR (dB, lower = more damage), with top-1 agreement with FP32 reported beside it but too
coarse to rank by (one layer alone rarely flips a prediction); for a detector, a segmenter or a
model of no known task the SQNR of the graph output the layer hurts most, every output's SQNR
beside it (a task metric such as mAP is coarser still, and costs NMS and matching per layer).
One loop for every task: the scorer says what a model's run gives and how rows are figured.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import onnx

from calib.backends.ort import OrtRunner
from calib.errors import CalibError, InternalError
from calib.passes import Images
from calib.progress import progress_bar
from calib.quantize import quantizable_layers, quantize_model
from calib.restore.score import ClassifierScorer, LayerRow, LayerSensitivity, Scorer


# ----------------------------------------------------------------------------- ranking
@dataclass
class SensitivityResult:
    measure: str
    images: int
    flavor: str
    reference: dict                  # FP32 beside the ranking: a classifier's {"fp32_top1"}, a task's {"task"}
    int8: dict                       # every layer quantized: the scorer's summary (logits SQNR, agreement, top1)
    all_float_max_abs_diff: float    # every layer float vs FP32: must be ~0
    rows: list[LayerRow]             # most damaging first
    seconds: float
    basic_fallbacks: list[str] = field(default_factory=list)  # layers re-run under ORT_ENABLE_BASIC

    @property
    def fp32_top1(self) -> float | None:
        return self.reference.get("fp32_top1")

    def ranking(self) -> list[str]:
        return [r.layer for r in self.rows]

    def as_dict(self) -> dict:
        d = {"measure": self.measure, "images": self.images, "flavor": self.flavor, **self.reference,
             "int8": self.int8, "all_float_max_abs_diff": self.all_float_max_abs_diff,
             "rows": [asdict(r) for r in self.rows], "seconds": self.seconds,
             "basic_fallbacks": list(self.basic_fallbacks)}
        d["ranking"] = self.ranking()
        return d


def rank_layers(prepared: onnx.ModelProto, amax: dict[str, float], flavor: str, images: Images,
                batch_size: int = 32, layers: Iterable[str] | None = None, weighted_only: bool = False,
                fp32_outputs=None, progress: bool = True, check_images: int = 2,
                channel_means: dict[str, list[float]] | None = None, device: str = "cpu",
                rules: dict | None = None, scorer: Scorer | None = None) -> SensitivityResult:
    """Sensitivity of each layer on `images` (FP32's outputs computed once and shared; given as
    `fp32_outputs`, in the scorer's form, they are not recomputed).

    `scorer` (`calib.restore.score`): what is read of each model and how the rows are figured and
    sorted; default the classifier's (logits SQNR, agreement, top-1: the figures of every release
    before scorers). For a task model, `scorer_for(task)`.

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
    scorer = scorer or ClassifierScorer()
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
    if fp32_outputs is None:
        fp32_outputs = scorer.collect(runner(prepared), images, batch_size)
    every = {layer.id for layer in all_layers}
    # The two ends: every layer quantized (the INT8 model), every layer float (must be FP32).
    int8_outputs = scorer.collect(runner(quantize_model(prepared, amax, flavor, channel_means=channel_means,
                                                    quantized_layers=every, **rules)[0]), images, batch_size)
    float_outputs = scorer.collect(runner(quantize_model(prepared, amax, flavor, quantized_layers=set(), **rules)[0]),
                               images, batch_size)
    all_float_diff = scorer.max_abs_diff(fp32_outputs, float_outputs)
    if not scorer.reproduces(fp32_outputs, float_outputs):
        raise InternalError(f"the model with every layer float differs from FP32 by {all_float_diff:.3g}")
    int8 = scorer.summary(fp32_outputs, int8_outputs, images)   # before the loop: a metric that cannot read
    check = images.head(check_images)                          # the outputs fails here, not after it
    rows, basic_fallbacks = [], []
    bar = progress_bar(chosen, desc="sensitivity", unit="layer", enabled=progress)
    for layer in bar:
        data = quantize_model(prepared, amax, flavor, channel_means=channel_means,
                              quantized_layers={layer.id}, **rules)[0].SerializeToString()
        outputs = scorer.collect(runner(data), images, batch_size)
        if check_images > 0 and scorer.sqnr(scorer.collect(runner(data, "basic"), check, batch_size),
                                            scorer.head(outputs, check_images)) < 25.0:
            basic_fallbacks.append(layer.id)
            outputs = scorer.collect(runner(data, "basic"), images, batch_size)
        rows.append(scorer.layer_row(layer, fp32_outputs, outputs, images))
    bar.close()
    rows.sort(key=scorer.order)
    return SensitivityResult(scorer.measure, len(images), flavor, scorer.reference_figures(fp32_outputs, images),
                             int8, all_float_diff, rows, time.perf_counter() - start, basic_fallbacks)


__all__ = ["LayerSensitivity", "SensitivityResult", "rank_layers"]
