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

from calib.diagnostics.sqnr import float_name
from calib.errors import CalibError, InternalError
from calib.evaluate import top5
from calib.evaluate.images import Images, run_logits
from calib.evaluate.sqnr import finite_or_none, sqnr, sqnr_rows
from calib.onnx_io import ort_session
from calib.progress import progress_bar
from calib.quantize.flavors import ORT_QUANTIZED_OPS, WEIGHTED_OPS, _corrected_bias, _ort_params, plan_for
from calib.quantize.graph import DATA_MOVEMENT_OPS, GraphIndex
from calib.quantize.qdq import QDQBuilder, symmetric_int8


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Layer:
    id: str                 # the node name, or "<op>:<output>" for an unnamed node
    op_type: str
    position: int           # index in the (flavor-rewritten) graph: topological order
    inputs: tuple[str, ...]  # the quantized activation inputs
    weight: str | None      # the quantized weight initializer, if any

    @property
    def weighted(self) -> bool:
        return self.op_type in WEIGHTED_OPS


def _node_id(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0]}"


class _Partial:
    """One flavor plan, and which of its nodes are layers."""

    def __init__(self, prepared: onnx.ModelProto, flavor: str):
        self.flavor = flavor
        self.plan = plan_for(prepared, flavor)  # a private copy; QDQBuilder edits it
        self.index = GraphIndex(self.plan.model)
        self.nodes = list(self.plan.model.graph.node)
        self.weights = {id(node): axis for node, axis in self.plan.weights}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for tensor, consumers in self.plan.activations.items():
            if consumers is None:
                self.consumers[tensor] = list(self.index.consumers.get(tensor, []))
            else:
                self.consumers[tensor] = list(consumers)
        quantized_inputs: dict[int, list[str]] = {}
        for tensor, consumers in self.plan.activations.items():
            for node in self.consumers[tensor]:
                if consumers is not None or node.op_type in ORT_QUANTIZED_OPS:
                    quantized_inputs.setdefault(id(node), []).append(tensor)
        # ReLUs that the ort flavor folded into the uint8 quantization of their producer's output:
        # a float reader of such a tensor needs the ReLU back.
        produced_by = {o: n.op_type for n in self.nodes for o in n.output}
        self.folded = {n.output[0]: n for n in prepared.graph.node
                       if n.op_type in ("Relu", "Clip") and produced_by.get(n.output[0], n.op_type) != n.op_type}
        self.layers: list[Layer] = []
        self.layer_node: dict[str, onnx.NodeProto] = {}
        for pos, node in enumerate(self.nodes):
            if node.op_type in DATA_MOVEMENT_OPS:
                continue
            if id(node) not in quantized_inputs and id(node) not in self.weights:
                continue
            lid = _node_id(node)
            if lid in self.layer_node:
                lid = f"{lid}#{pos}"
            self.layer_node[lid] = node
            weight = node.input[1] if id(node) in self.weights else None
            self.layers.append(Layer(lid, node.op_type, pos, tuple(quantized_inputs.get(id(node), ())), weight))

    def build(self, amax: dict[str, float], quantized: set[str],
              channel_means: dict[str, list[float]] | None = None) -> onnx.ModelProto:
        """Mirrors quantize_model (same parameters, bias correction, int32 biases) for the
        quantized layers; with every layer quantized the bytes are identical."""
        unknown = sorted(quantized - set(self.layer_node))
        if unknown:
            raise CalibError(f"unknown layer(s) {', '.join(unknown[:3])} for this model and Q/DQ flavor")
        on = {id(self.layer_node[lid]) for lid in quantized}
        unit_ids = {id(n) for n in self.layer_node.values()}
        # A data-movement op is quantized when something quantized reads its output.
        for node in reversed(self.nodes):
            if node.op_type in DATA_MOVEMENT_OPS and any(
                    id(c) in on for out in node.output for c in self.index.consumers.get(out, [])):
                on.add(id(node))
        builder = QDQBuilder(self.plan.model)
        params = {}
        kept: dict[str, set[int]] = {}
        for tensor, consumers in self.plan.activations.items():
            if tensor not in amax:
                continue  # no scale: left float, as quantize_model(allow_missing=True) does
            if self.flavor == "tensorrt":
                params[tensor] = symmetric_int8(amax[tensor])
            else:
                params[tensor] = _ort_params(self.index, tensor, amax, params, self.plan.nonnegative)
            every = self.consumers[tensor]
            chosen = [n for n in every if id(n) in on]
            if not chosen:
                continue
            if consumers is None:
                # Consumers that are neither layers nor data movement (e.g. a Softmax reading a
                # quantized Conv output) read the DequantizeLinear output whenever it exists.
                chosen += [n for n in every if id(n) not in on and id(n) not in unit_ids
                           and n.op_type not in DATA_MOVEMENT_OPS]
                selected = None if len(chosen) == len(every) else chosen
            else:
                selected = chosen
            builder.quantize_activation(tensor, params[tensor], selected)
            kept[tensor] = {id(n) for n in chosen}
        for node, axis in self.plan.weights:
            if id(node) not in on:
                continue  # a float layer keeps its float weight (and its float input)
            w_scale = builder.quantize_weight(node, 1, axis)
            bias = _corrected_bias(builder, node, axis, channel_means)
            if (self.flavor == "ort" and len(node.input) > 2 and node.input[2]
                    and id(node) in kept.get(node.input[0], ())):
                builder.quantize_bias(node, 2, np.float32(params[node.input[0]].scale) * w_scale, bias)
            elif bias is not None:
                builder.replace_constant(node, 2, bias, "bias_corrected")
        return self._unfold(builder.build())

    def _unfold(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Give the float readers of a folded-ReLU tensor the ReLU back. The producer keeps
        writing the pre-ReLU values under the tensor's name and its QuantizeLinear keeps reading
        them (uint8 with zero point 0 clips as the ReLU would), so a model whose readers are all
        quantized is unchanged; a float reader reads `<tensor>_float` = ReLU(tensor)."""
        nodes = list(model.graph.node)
        position = {o: i for i, n in enumerate(nodes) for o in n.output}
        inserts = []
        for tensor, act in self.folded.items():
            raw = [n for n in nodes if tensor in n.input
                   and not (n.op_type == "QuantizeLinear" and n.output[0] == f"{tensor}_QuantizeLinear_Output")]
            if not raw:
                continue
            fixed = float_name(tensor)
            for n in raw:
                for i, name in enumerate(n.input):
                    if name == tensor:
                        n.input[i] = fixed
            relu = onnx.NodeProto()
            relu.CopyFrom(act)
            relu.input[0] = tensor
            relu.output[0] = fixed
            relu.name = f"{fixed}_{act.op_type}"
            after = max(position.get(i, -1) for i in relu.input if i)
            inserts.append((after, relu))
        for after, relu in sorted(inserts, key=lambda x: -x[0]):
            nodes.insert(after + 1, relu)
        if inserts:
            del model.graph.node[:]
            model.graph.node.extend(nodes)
        return model


def quantizable_layers(prepared: onnx.ModelProto, flavor: str) -> list[Layer]:
    """The layers of `prepared` under `flavor`, in graph order."""
    return _Partial(prepared, flavor).layers


def build_partial(prepared: onnx.ModelProto, amax: dict[str, float], flavor: str,
                  float_layers: Iterable[str] = (), quantized_layers: Iterable[str] | None = None,
                  channel_means: dict[str, list[float]] | None = None) -> onnx.ModelProto:
    """The Q/DQ model with `float_layers` left in float (or, when `quantized_layers` is given,
    with exactly those layers quantized). Layer ids come from `quantizable_layers`;
    `channel_means` (bias correction) as for quantize_model: a float layer keeps its own bias."""
    partial = _Partial(prepared, flavor)
    every = {layer.id for layer in partial.layers}
    if quantized_layers is not None:
        quantized = set(quantized_layers)
    else:
        float_set = set(float_layers)
        unknown = sorted(float_set - every)
        if unknown:
            raise CalibError(f"unknown layer(s) {', '.join(unknown[:3])} for this model and Q/DQ flavor")
        quantized = every - float_set
    return partial.build(amax, quantized, channel_means)


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
                channel_means: dict[str, list[float]] | None = None) -> SensitivityResult:
    """Sensitivity of each layer on `images` (FP32 logits computed once and shared).

    The single-layer models run under ORT_ENABLE_ALL (3-4x faster than ORT_ENABLE_BASIC on
    CPU: fused Conv+activation, blocked layouts); they only ever hold the pattern ONNX Runtime
    computes right (a quantized layer reads DequantizeLinear input AND weight, a float layer
    float input AND weight). As a guard, each model's logits on the first `check_images` images
    are compared with ORT_ENABLE_BASIC (Q/DQ simulated exactly, no fusion); a model where the two
    disagree (SQNR < 25 dB) is re-run under ORT_ENABLE_BASIC and listed in `basic_fallbacks`.
    """
    start = time.perf_counter()
    all_layers = quantizable_layers(prepared, flavor)
    chosen = all_layers
    if layers is not None:
        wanted = set(layers)
        chosen = [layer for layer in all_layers if layer.id in wanted]
    if weighted_only:
        chosen = [layer for layer in chosen if layer.weighted]
    if not chosen:
        raise CalibError("the model has no quantized layer to rank")
    if fp32_logits is None:
        fp32_logits = run_logits(ort_session(prepared, "all"), images, batch_size)
    every = {layer.id for layer in all_layers}
    # The two ends: every layer quantized (the INT8 model), every layer float (must be FP32).
    int8_logits = run_logits(ort_session(build_partial(prepared, amax, flavor, quantized_layers=every, channel_means=channel_means), "all"),
                             images, batch_size)
    float_logits = run_logits(ort_session(build_partial(prepared, amax, flavor, quantized_layers=set()), "all"),
                              images, batch_size)
    all_float_diff = float(np.max(np.abs(float_logits - fp32_logits)))
    if all_float_diff > 1e-3 * max(1.0, float(np.max(np.abs(fp32_logits)))):
        raise InternalError(f"the model with every layer float differs from FP32 by {all_float_diff:.3g}")
    check = images.head(check_images)
    rows, basic_fallbacks = [], []
    bar = progress_bar(chosen, desc="sensitivity", unit="layer", enabled=progress)
    for layer in bar:
        data = build_partial(prepared, amax, flavor, quantized_layers={layer.id},
                             channel_means=channel_means).SerializeToString()
        logits = run_logits(ort_session(data, "all"), images, batch_size)
        if check_images > 0 and sqnr(run_logits(ort_session(data, "basic"), check, batch_size),
                                     logits[:check_images]) < 25.0:
            basic_fallbacks.append(layer.id)
            logits = run_logits(ort_session(data, "basic"), images, batch_size)
        rows.append(LayerSensitivity(layer.id, layer.op_type, layer.position, layer.weighted,
                                     **_score(fp32_logits, logits, images.labels)))
    bar.close()
    inf = float("inf")
    rows.sort(key=lambda r: (inf if r.logits_sqnr_db is None else r.logits_sqnr_db, r.agreement, r.position))
    fp32_top1 = float(np.mean(top5(fp32_logits)[:, 0] == images.labels))
    return SensitivityResult(MEASURE, len(images), flavor, fp32_top1, _score(fp32_logits, int8_logits, images.labels),
                             all_float_diff, rows, time.perf_counter() - start, basic_fallbacks)
