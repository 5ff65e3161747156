"""Q/DQ materialization: calibrated ranges in, INT8 Q/DQ ONNX models out, in registered flavors.

    from calib.quantize import quantize_model, quantizable_layers, get_flavor
    qdq, missing = quantize_model(prepared, amax, "tensorrt")              # full INT8
    layers = quantizable_layers(prepared, "ort")
    qdq, _ = quantize_model(prepared, amax, "ort", float_layers=[layers[0].id])  # one layer float
    qdq, _ = quantize_model(prepared, amax, "ort", exclude=[r"/head/"], exclude_ops=["Concat"])
    excluded_nodes(prepared, "ort", exclude=[r"/head/"]).to_json()   # what stays float, and why

Modules, bottom up: `naming` (the names of added tensors), `graph` (producers, consumers, element
types, activations, signs), `qdq` (the graph surgery), `patterns` (residual Adds, gates, read off
the structure), `heads` (what stays float: heads, the user's exclusions), `flavor` (the Flavor
contract and its Plan), `registry` (name -> flavor), `flavor_tensorrt` and `flavor_ort` (the built-ins), `layers` (which Q/DQ a layer owns, for
partial models), `materialize` (the one materializer). A user's export is made quantizable (fixed
input size, opset, external data) by calib.models before it gets here. The placement rules:
docs/quantization.md.
"""

from calib.quantize.flavor import Flavor, Plan, WEIGHTED_OPS, weight_axis
from calib.quantize.heads import Excluded, ExcludedNode
from calib.quantize.registry import (ENTRY_POINT_GROUP, flavor_class, flavor_names, get_flavor, register_flavor,
                                     registered_flavor_names, reload_plugins)

# Built-ins register themselves on import.
from calib.quantize.flavor_ort import OrtFlavor  # noqa: E402
from calib.quantize.flavor_tensorrt import TensorRTFlavor  # noqa: E402
from calib.quantize.layers import Layer, quantizable_layers  # noqa: E402
from calib.quantize.materialize import (MissingScales, bias_shift, calibrated_tensors, excluded_nodes,  # noqa: E402
                                       plan_for, quantize_model, required_tensors, weighted_inputs)

__all__ = [
    "ENTRY_POINT_GROUP", "Excluded", "ExcludedNode", "Flavor", "Layer", "MissingScales", "OrtFlavor", "Plan", "TensorRTFlavor", "WEIGHTED_OPS",
    "bias_shift", "calibrated_tensors", "excluded_nodes", "flavor_class", "flavor_names", "get_flavor", "plan_for", "quantizable_layers", "quantize_model",
    "register_flavor", "registered_flavor_names", "reload_plugins", "required_tensors", "weight_axis", "weighted_inputs",
]
