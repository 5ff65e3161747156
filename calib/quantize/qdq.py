"""QuantizeLinear/DequantizeLinear insertion, shared by both Q/DQ flavors.

A flavor decides *which* tensors get quantized and with which parameters; this module does
the graph surgery: Q/DQ pairs after activations, int8 weights behind DequantizeLinear, int32
biases, all in topological order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calib.cache.validate import MAX_SCALE, MIN_SCALE
from calib.quantize.graph import GraphIndex
from calib.quantize.naming import (DEQUANTIZE_NODE, QUANTIZE_NODE, bias_corrected_name, dequantized_name,
                                   quantized_constant_name, quantized_name, scale_name, zero_point_name)

INT8_MAX = 127


@dataclass(frozen=True)
class ActivationQuant:
    scale: float
    zero_point: int
    dtype: str  # "int8" | "uint8"


def symmetric_int8(amax: float) -> ActivationQuant:
    """TensorRT's activation quantization: int8, zero point 0, scale amax/127."""
    return ActivationQuant(activation_scale(amax, INT8_MAX), 0, "int8")


def activation_scale(amax: float, levels: int) -> float:
    """amax/levels as a float32, always a valid scale (`calib.cache.validate.scale_problem`):
    a zero range (all-zero tensor) still needs a positive scale (any value quantizes 0 exactly),
    and a range below MIN_SCALE*levels or above MAX_SCALE*levels gets the nearest valid scale, so
    calibration never writes a scale that every reader of the cache would refuse."""
    scale = amax / levels
    if not scale > MIN_SCALE:
        return MIN_SCALE
    if scale >= MAX_SCALE:
        return MAX_SCALE
    return min(float(np.float32(scale)), MAX_SCALE)  # rounding to float32 may pass MAX_SCALE


class QDQBuilder:
    def __init__(self, model: onnx.ModelProto, types: dict[str, int] | None = None):
        # Edits `model` in place: callers pass a copy they own (plans refer to its nodes).
        self.model = model
        self.index = GraphIndex(self.model, types)
        # tensor -> (params, consumer node positions or None for every consumer)
        self.activations: dict[str, tuple[ActivationQuant, set[int] | None]] = {}
        self.weight_inputs: dict[tuple[int, int], str] = {}   # (node pos, input pos) -> new name
        self.new_initializers: list[onnx.TensorProto] = []
        self.weight_nodes: list[onnx.NodeProto] = []
        self.replaced_initializers: set[str] = set()
        self._position = {id(n): i for i, n in enumerate(self.model.graph.node)}
        self.weight_scales: dict[str, np.ndarray] = {}
        self._quantized_weights: dict[str, tuple[np.ndarray, int]] = {}  # name -> (int8 values, axis)

    def position(self, node: onnx.NodeProto) -> int:
        return self._position[id(node)]

    # -- activations -------------------------------------------------------------------------
    def quantize_activation(self, tensor: str, params: ActivationQuant,
                            consumers: list[onnx.NodeProto] | None = None) -> None:
        """Q/DQ on `tensor`, read by `consumers` (all consumers when None)."""
        if tensor in self.activations:
            old, selected = self.activations[tensor]
            if old != params:
                raise ValueError(f"tensor {tensor} quantized twice with different parameters")
            if selected is None or consumers is None:
                self.activations[tensor] = (params, None)
            else:
                selected.update(self.position(n) for n in consumers)
            return
        positions = None if consumers is None else {self.position(n) for n in consumers}
        self.activations[tensor] = (params, positions)

    # -- weights -----------------------------------------------------------------------------
    def quantize_weight(self, node: onnx.NodeProto, input_pos: int, axis: int) -> np.ndarray:
        """Per-channel symmetric int8 weight along `axis`; returns the per-channel scales."""
        name = node.input[input_pos]
        w = self.index.initializer_array(name)
        if w is None:
            raise ValueError(f"{node.name}: input {name} is not a constant")
        w = w.astype(np.float32)
        reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
        amax = np.max(np.abs(w), axis=reduce_axes) if reduce_axes else np.abs(w)
        scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        # In place on one float32 buffer: large weights (VGG's 100M-value FC) stay cheap.
        t = w / scale.reshape(shape)
        np.rint(t, out=t)
        np.clip(t, -INT8_MAX, INT8_MAX, out=t)
        q = t.astype(np.int8)
        del t
        out = self._dequantize_constant(name, q, scale, np.zeros_like(scale, np.int8), axis)
        self.weight_inputs[(self.position(node), input_pos)] = out
        self.weight_scales[name] = scale
        self._quantized_weights[name] = (q, axis)
        return scale

    def weight_error(self, name: str) -> np.ndarray:
        """Dequantized minus float weight `name` (float64), for bias correction: computed on
        request only, since it is 8 bytes per weight."""
        q, axis = self._quantized_weights[name]
        shape = [1] * q.ndim
        shape[axis] = -1
        w = self.index.initializer_array(name).astype(np.float32)
        return q.astype(np.float64) * self.weight_scales[name].reshape(shape) - w

    def replace_bias(self, node: onnx.NodeProto, input_pos: int, value: np.ndarray) -> None:
        """Feed `node` a new float bias (corrected for the weight-quantization shift)."""
        name = bias_corrected_name(node.input[input_pos])
        if any(i.name == name for i in self.new_initializers):
            name = f"{name}_{self.position(node)}"
        self.new_initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.replaced_initializers.add(node.input[input_pos])
        self.weight_inputs[(self.position(node), input_pos)] = name

    def quantize_bias(self, node: onnx.NodeProto, input_pos: int, scale: np.ndarray,
                      values: np.ndarray | None = None) -> None:
        """int32 bias with scale input_scale * weight_scale, as integer Conv/Gemm kernels need."""
        name = node.input[input_pos]
        b = (self.index.initializer_array(name) if values is None else values).astype(np.float64)
        scale = scale.astype(np.float32)
        q = np.clip(np.rint(b / scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        out = self._dequantize_constant(name, q, scale, np.zeros(scale.shape, np.int32), 0)
        self.weight_inputs[(self.position(node), input_pos)] = out

    def _dequantize_constant(self, name: str, q: np.ndarray, scale: np.ndarray,
                             zero_point: np.ndarray, axis: int) -> str:
        base = f"{name}_{len(self.weight_nodes)}" if name in self.replaced_initializers else name
        self.replaced_initializers.add(name)
        q_name, s_name, z_name = quantized_constant_name(base), scale_name(base), zero_point_name(base)
        out = dequantized_name(base)
        self.new_initializers += [numpy_helper.from_array(q, q_name),
                                  numpy_helper.from_array(scale, s_name),
                                  numpy_helper.from_array(zero_point, z_name)]
        attrs = {"axis": axis} if scale.size > 1 else {}
        self.weight_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                                  name=f"{base}{DEQUANTIZE_NODE}", **attrs))
        return out

    # -- output ------------------------------------------------------------------------------
    def _activation_pair(self, tensor: str, params: ActivationQuant) -> tuple[list, list, str]:
        s_name, z_name = scale_name(tensor), zero_point_name(tensor)
        zp_dtype = np.int8 if params.dtype == "int8" else np.uint8
        inits = [numpy_helper.from_array(np.array(params.scale, np.float32), s_name),
                 numpy_helper.from_array(np.array(params.zero_point, zp_dtype), z_name)]
        q_out, dq_out = quantized_name(tensor), dequantized_name(tensor)
        nodes = [helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_out],
                                  name=f"{tensor}{QUANTIZE_NODE}"),
                 helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                  name=f"{tensor}{DEQUANTIZE_NODE}")]
        return nodes, inits, dq_out

    def build(self) -> onnx.ModelProto:
        g = self.model.graph
        pairs = {t: self._activation_pair(t, p) for t, (p, _) in self.activations.items()}
        nodes: list[onnx.NodeProto] = list(self.weight_nodes)
        inits: list[onnx.TensorProto] = list(self.new_initializers)
        for t in self.index.graph_inputs:
            if t in pairs:
                nodes += pairs[t][0]
        for pos, node in enumerate(g.node):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for i, name in enumerate(new.input):
                if (pos, i) in self.weight_inputs:
                    new.input[i] = self.weight_inputs[(pos, i)]
                elif name in pairs:
                    selected = self.activations[name][1]
                    if selected is None or pos in selected:
                        new.input[i] = pairs[name][2]
            nodes.append(new)
            for out in node.output:
                if out in pairs:
                    nodes += pairs[out][0]
        for t, (_, extra_inits, _) in pairs.items():
            inits += extra_inits
        still_used = {name for n in nodes for name in n.input}
        kept = [i for i in g.initializer if i.name not in self.replaced_initializers or i.name in still_used]
        del g.node[:]
        g.node.extend(nodes)
        del g.initializer[:]
        g.initializer.extend(kept + inits)
        # value_info of tensors we rewired may be stale; shape inference rebuilds what is needed.
        del g.value_info[:]
        if not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in self.model.opset_import):
            raise ValueError("per-channel Q/DQ needs opset 13 or newer")
        return self.model
