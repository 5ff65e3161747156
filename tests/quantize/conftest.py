import numpy as np
import onnx
import pytest

from quantize_helpers import ranges


@pytest.fixture()
def tiny(tiny_classifier):
    """The tiny classifier of tests/conftest.py, 8 seeded inputs and their ranges (max |x|)."""
    model = onnx.load(str(tiny_classifier))
    x = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    return model, x, ranges(model, {"input": x})
