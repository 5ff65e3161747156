"""Exposing intermediate tensors as graph outputs: the one way calib reads activations.

A copy of the model gets extra outputs; each is declared with its element type from ONNX type
inference, and integer or boolean tensors (Shape/Gather/Slice arithmetic, masks) are never
exposed, nor declared FLOAT (ONNX Runtime rejects an output whose declared type differs from the
computed one). A tensor inference cannot type is declared without a type; the pass keeps it only
if ONNX Runtime computes it as float. With `shapes`, the outputs also carry their inferred shapes,
so a GPU runner can allocate their buffers before the run (ONNX Runtime's IOBinding).
"""

from __future__ import annotations

import onnx

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
FLOAT_ORT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


def expose(model: onnx.ModelProto, tensors: list[str] | None = None, shapes: bool = False
           ) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose outputs include `tensors` (default: every float activation), in
    the order given, and the names kept (float or untyped tensors the graph holds)."""
    from calib.models.structure import element_types
    from calib.quantize.graph import GraphIndex

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    if tensors is None:
        names = GraphIndex(exposed).activations()
    else:
        held = {i.name for i in exposed.graph.input} | {o for n in exposed.graph.node for o in n.output}
        names = [t for t in dict.fromkeys(tensors) if t in held]
    types = element_types(exposed)
    existing = {o.name for o in exposed.graph.output}
    kept = []
    for name in names:
        elem = types.get(name, onnx.TensorProto.UNDEFINED)
        if elem != onnx.TensorProto.UNDEFINED and elem not in FLOAT_TYPES:
            continue
        kept.append(name)
        if name in existing:
            continue
        existing.add(name)
        if elem == onnx.TensorProto.UNDEFINED:
            exposed.graph.output.add().name = name
        else:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    if shapes:
        _add_shapes(model, exposed)
    return exposed, kept


def _add_shapes(model: onnx.ModelProto, exposed: onnx.ModelProto) -> None:
    try:
        # Inferred on the original graph: there the activations are intermediate values.
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
                 + list(inferred.graph.input)}
    except Exception:  # shapes stay unknown: ONNX Runtime allocates those outputs itself
        return
    for out in exposed.graph.output:
        info = known.get(out.name)
        if info is not None and info.type.tensor_type.HasField("shape"):
            out.CopyFrom(info)
