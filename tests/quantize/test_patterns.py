"""Structural patterns: convolution branches, residual Adds, gates."""

import numpy as np
from onnx import helper

from calib.quantize.graph import GraphIndex
from calib.quantize.patterns import is_convolution_branch, is_gate, residual_input

from quantize_helpers import make_model, weights


def _index(nodes, inits):
    return GraphIndex(make_model(nodes, {"x": [1, 4, 8, 8]}, {"out": None}, inits))


def test_a_residual_add_has_exactly_one_convolution_branch():
    rng = np.random.default_rng(0)
    inits = {"w": weights(rng, 4, 4, 1, 1), "b": weights(rng, 1, 4, 1, 1), "g": weights(rng, 1, 4, 1, 1),
             "w2": weights(rng, 4, 4, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Add", ["c", "b"], ["cb"]),        # a bias
             helper.make_node("Mul", ["g", "cb"], ["cs"]),        # a layer scale
             helper.make_node("Transpose", ["cs"], ["ct"], perm=[0, 1, 3, 2]),
             helper.make_node("Add", ["ct", "x"], ["res"]),        # residual: x is the skip input
             helper.make_node("Conv", ["x", "w2"], ["d"]),
             helper.make_node("Add", ["c", "d"], ["both"]),        # two convolution branches
             helper.make_node("Relu", ["res"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["neither"]),
             helper.make_node("Add", ["both", "neither"], ["out"])]
    index = _index(nodes, inits)
    node = {n.output[0]: n for n in index.model.graph.node}
    assert is_convolution_branch(index, "ct") and not is_convolution_branch(index, "r")
    assert residual_input(index, node["res"]) == "x"
    assert residual_input(index, node["both"]) is None
    assert residual_input(index, node["neither"]) is None
    assert residual_input(index, node["cb"]) is None  # a bias Add is not a residual


def test_gates_are_sigmoid_or_hardsigmoid_outputs():
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Sigmoid", ["p"], ["s"]),
             helper.make_node("HardSigmoid", ["x"], ["h"]),
             helper.make_node("Reshape", ["s", "shape"], ["sr"]),
             helper.make_node("Erf", ["x"], ["e"]),
             helper.make_node("Mul", ["x", "sr"], ["out"])]
    index = _index(nodes, {"shape": np.array([1, 4, 1, 1], np.int64)})
    assert is_gate(index, "sr") and is_gate(index, "h") and not is_gate(index, "e") and not is_gate(index, "x")
