"""Graph passes that need only a model's structure, run on a skeleton of it.

ONNX's shape/type inference and version converter are C++ passes that take the serialized
model: a copy of every weight each time, and impossible past protobuf's 2 GB limit. They read
tensor dims and types, never the values of large tensors, so they run here on a skeleton whose
large tensors are stubs (dims and type kept, data marked external), and the real tensors are put
back by name afterwards. Small tensors (shapes, axes, scalars) stay, as inference reads them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from calib.errors import InternalError

STUB_BYTES = 1 << 16          # tensors above this become stubs
_STUB_LOCATION = "calib-skeleton-stub"


def _nbytes(t: TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * 4


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initializers carry no data."""
    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if model.HasField(field):
            setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    for field in ("name", "doc_string"):
        if src.HasField(field):
            setattr(g, field, getattr(src, field))
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, field).extend(getattr(src, field))
    for t in src.initializer:
        if t.data_location == TensorProto.EXTERNAL or _nbytes(t) <= STUB_BYTES:
            g.initializer.append(t)
            continue
        stub = g.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", _STUB_LOCATION
    return light


def restore(light: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """`light` (a skeleton, or what a pass made of one) with `model`'s data in place of its stubs."""
    real = {t.name: t for t in model.graph.initializer}
    for t in light.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL and any(
                e.key == "location" and e.value == _STUB_LOCATION for e in t.external_data):
            source = real.get(t.name)
            if source is None or list(source.dims) != list(t.dims):
                raise InternalError(f"a graph pass changed weight tensor {t.name}; cannot restore it")
            t.CopyFrom(source)
    return light


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with ONNX shape/type inference's value_info (and output shapes) filled in place;
    nodes inference cannot handle are left without (never an error)."""
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(model.graph.output, inferred.graph.output):
        if theirs.type.tensor_type.HasField("shape"):
            mine.type.CopyFrom(theirs.type)
    return model


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (TensorProto.DataType) of every tensor whose type is known after inference:
    graph inputs, outputs, initializers and inferred intermediate tensors."""
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        if elem:
            types[vi.name] = elem
    return types


def convert_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`model` converted to default-domain opset `version` (onnx.version_converter); raises what
    the converter raises."""
    from onnx import version_converter

    return restore(version_converter.convert_version(skeleton(model), version), model)


def drop_foreign_opsets(proto) -> None:
    """ORT's optimized models import every domain it knows; keep those the graph uses."""
    used = {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def simplify(src: Path, dst: Path) -> None:
    """Fold constants, BatchNorm and Pad into Conv with ONNX Runtime's basic level, which keeps
    standard ONNX ops only, and drop the opset imports ORT adds."""
    import onnx

    from calib.onnx_io import ort_session

    ort_session(src, "basic", optimized_path=dst)
    proto = onnx.load(str(dst))
    drop_foreign_opsets(proto)
    onnx.save(proto, str(dst))
