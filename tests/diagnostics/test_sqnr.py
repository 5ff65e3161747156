"""Per-tensor SQNR of Q/DQ models against FP32: it must see a damaged tensor, not report a constant."""

import numpy as np
import pytest
import onnx

from calib.data import Dataset
from calib.data.demo import DemoSource
from calib.data.transforms import get_preset
from calib.diagnostics.sqnr import activation_sqnr
from calib.stats.sqnr import sqnr, sqnr_db
from calib.quantize import quantize_model, required_tensors
from tests.conftest import has_cuda_ort


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


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_ort(), reason="needs an NVIDIA GPU with CUDA and onnxruntime-gpu")
def test_a_clipped_tensor_stands_out_on_the_gpu(tiny_classifier):
    """The same figures decoded and run on the GPU (Pillow workers: the CPU path's pixels)."""
    from PIL import Image

    from calib.data.sources import ImageSource, Sample

    class Noise(ImageSource):   # seeded smooth images: no photos needed on the GPU machine
        def open(self, sample):
            rng = np.random.default_rng(int(sample.key))
            return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((24, 24))

    model = onnx.load(str(tiny_classifier))
    tensors = required_tensors(model, "tensorrt")
    dataset = Dataset.of(Noise([Sample(str(i), 0) for i in range(8)], "noise", "8 noise images"),
                         get_preset("torchvision", 16))
    amax = {t: 50.0 for t in tensors}
    victim = tensors[1]
    good, _ = quantize_model(model, amax, "tensorrt")
    bad, _ = quantize_model(model, dict(amax, **{victim: 0.5}), "tensorrt")
    gpu = activation_sqnr(model, {"good": good, "bad": bad}, dataset, tensors, batch_size=4, workers=0,
                          device="cuda:0", decoder="pil")
    cpu = activation_sqnr(model, {"good": good}, dataset, tensors, batch_size=4, workers=0)
    assert gpu["good"][victim] > gpu["bad"][victim] + 10
    assert abs(gpu["good"][victim] - cpu["good"][victim]) < 1.0
