"""Making an export quantizable: fixed H/W (shape subgraphs fold), IR<4 initializers, opset >= 13."""

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.errors import CalibError
from calib.onnx_io import load_model, ort_session
from calib.quantize.graph import GraphIndex
from calib.quantize.prepare import fix_input_shape, initializers_as_constants, prepare_model, upgrade_opset

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _export(tmp_path: Path, dynamo: bool) -> Path:
    """A module whose export computes a reshape from the input's height and width, with the
    walkthrough's dynamic batch, height and width."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.reshape(-1, y.shape[1], y.shape[2] * y.shape[3]).mean(-1))

    torch.manual_seed(0)
    path = tmp_path / ("dynamo.onnx" if dynamo else "legacy.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=18 if dynamo else 17, dynamo=dynamo,
                          dynamic_axes={"input": {0: "batch_size", 2: "height", 3: "width"}},
                          **({"verbose": False, "external_data": True} if dynamo else {}))
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_fixed_size_propagates_and_keeps_the_batch_dynamic(tmp_path, dynamo):
    from calib.models import simplify

    path = _export(tmp_path, dynamo)
    raw = load_model(path)  # the dynamo exporter's weights are in path.onnx.data
    assert any(n.op_type == "Shape" for n in raw.graph.node)
    fixed = fix_input_shape(raw, 12, 10)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 12, 10]
    conv = next(n.output[0] for n in fixed.graph.node if n.op_type == "Conv")
    [info] = [v for v in fixed.graph.value_info if v.name == conv]  # shape inference ran again
    assert [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim][1:] == [4, 12, 10]
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    simplify(tmp_path / "fixed.onnx", tmp_path / "opt.onnx")
    optimized = load_model(tmp_path / "opt.onnx")
    index = GraphIndex(optimized)  # what is left of the shape arithmetic is never an activation
    assert index.activations() and all(index.is_float(t) for t in index.activations())
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(ort_session(optimized).run(None, {"input": x})[0],
                               ort_session(raw).run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_fix_input_shape_says_what_it_found(tiny_classifier):
    model = onnx.load(str(tiny_classifier))  # input (batch, 3, 16, 16)
    assert fix_input_shape(model, 16, 16).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 16
    with pytest.raises(CalibError, match="fixed size 16 on axis 2, not 32"):
        fix_input_shape(model, 32, 32)
    with pytest.raises(CalibError, match="positive"):
        fix_input_shape(model, 0, 16)
    two = onnx.ModelProto()
    two.CopyFrom(model)
    two.graph.input.append(onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [1]))
    with pytest.raises(CalibError, match="one image input, found 2"):
        fix_input_shape(two, 16, 16)


def test_old_zoo_graph_gets_constant_initializers_and_opset_13():
    path = LIGHT / "light_squeezenet.onnx"
    raw = onnx.load(str(path))
    inits = {i.name for i in raw.graph.initializer}
    assert raw.ir_version == 3 and raw.opset_import[0].version == 9 and len(raw.graph.input) > 1
    prepared = prepare_model(raw)
    assert [i.name for i in prepared.graph.input] == [i.name for i in raw.graph.input if i.name not in inits]
    assert prepared.opset_import[0].version == 13 and prepared.ir_version >= 7
    assert GraphIndex(prepared).graph_inputs == ["data_0"]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(ort_session(prepared).run(None, {"data_0": x})[0],
                               ort_session(raw, "basic").run(None, {"data_0": x})[0], rtol=1e-5, atol=1e-6)
    assert initializers_as_constants(prepared) is prepared  # nothing left to do


def test_an_opset_the_converter_cannot_reach_is_one_line(monkeypatch):
    from onnx import version_converter

    def refuse(model, version):
        raise RuntimeError("adapter missing for op Foo\nmore details")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    raw = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    with pytest.raises(CalibError, match=r"cannot convert the model from opset 9 to 13 .*adapter missing for op Foo$"):
        upgrade_opset(raw)
