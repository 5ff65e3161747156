"""Per-tensor SQNR of Q/DQ models against FP32: it must see a damaged tensor, not report a constant."""

import numpy as np
import onnx

from calib.data import Dataset
from calib.data.demo import DemoSource
from calib.data.transforms import get_preset
from calib.diagnostics.sqnr import activation_sqnr
from calib.stats.sqnr import sqnr, sqnr_db
from calib.quantize import quantize_model, required_tensors


def test_sqnr_of_known_signals():
    x = np.array([3.0, 4.0])
    assert sqnr(x, x) == float("inf")
    assert abs(sqnr(x, x + np.array([0.3, 0.4])) - 20.0) < 1e-9  # noise 1/100 of the signal power
    assert sqnr_db(0.0, 1.0) == float("-inf")


def test_a_clipped_tensor_stands_out(tmp_path, tiny_classifier):
    model = onnx.load(str(tiny_classifier))
    tensors = required_tensors(model, "tensorrt")
    dataset = Dataset.of(DemoSource(variants=False), get_preset("torchvision", 16))
    # Ranges a little above what the tensors reach (no clipping anywhere) ...
    amax = {t: 50.0 for t in tensors}
    good, _ = quantize_model(model, amax, "tensorrt")
    # ... and one tensor clipped at a hundredth of that: its own SQNR must collapse.
    victim = tensors[1]
    bad, _ = quantize_model(model, dict(amax, **{victim: 0.5}), "tensorrt")
    out = activation_sqnr(model, {"good": good, "bad": bad}, dataset, tensors, batch_size=4, workers=0)
    assert out["good"][victim] > out["bad"][victim] + 10
    others = [t for t in tensors if t != victim and t in out["bad"]]
    assert len(set(round(v, 3) for v in out["good"].values())) > 1  # not a constant
    assert all(abs(out["good"][t] - out["bad"][t]) < 1e-6 for t in others[:1])  # upstream tensors untouched
