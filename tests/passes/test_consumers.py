"""calib.passes.consumers and calib.passes.expose: channel means from device tensors equal the host
ones, observers that reduce on the device get tensors and the others host copies, exposed outputs
carry shapes for a GPU runner; on a GPU the statistics match the CPU pass within one bin."""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators.channel_means import ChannelMeans, Observers
from calib.calibrators.statistics import TensorStatistics
from calib.data.batch import Batch
from calib.passes.consumers import Observe
from calib.passes.walk import Step
from tests.conftest import has_cuda_ort

gpu = pytest.mark.skipif(not has_cuda_ort(), reason="needs an NVIDIA GPU with CUDA and onnxruntime-gpu")


def test_exposed_outputs_are_shaped(tiny_classifier):
    import onnx

    from calib.passes import expose

    model = onnx.load(str(tiny_classifier))
    exposed, names = expose(model, None, shapes=True)
    shaped = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in exposed.graph.output}
    assert "c1" in names and shaped["c1"][1:] == [8, 8, 8]
    assert all(o.type.tensor_type.HasField("shape") for o in exposed.graph.output)


def test_channel_means_of_torch_tensors_match_numpy_and_log_their_batch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ref, target = ChannelMeans(["a"]), ChannelMeans(["a"], log=True)
    for i in range(3):
        x = rng.standard_normal((4, 5, 6, 7)).astype(np.float32)
        ref.observe("a", x)
        target.batch = i
        target.observe("a", torch.from_numpy(x))
        target.observe("b", torch.from_numpy(x))   # not one of its tensors
    assert target.counts == ref.counts and set(target.sums) == {"a"}
    np.testing.assert_allclose(target.means()["a"], ref.means()["a"], rtol=1e-6)
    assert [entry[0] for entry in target.log] == [0, 1, 2]


def test_observe_hands_device_tensors_only_to_observers_that_reduce_them():
    from calib.calibrators import get_calibrator

    class Other:
        seen = None

        def observe(self, name, x):
            Other.seen = type(x)

    class FakeDevice:   # stands in for a CUDA tensor: calib.tensor asks its module and device
        __module__ = "torch"

        class device:
            type = "cuda"

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return np.ones(3, np.float32)

    step = Step(Batch(None, None, ["k"]), 0, {"fp32": {"t": FakeDevice()}})
    Observe(Other(), ["t"]).consume(step)
    assert Other.seen is np.ndarray
    assert Observe(Observers(TensorStatistics(), get_calibrator("minmax"), ChannelMeans()), ["t"]).device_ready
    assert not Observe(Observers(TensorStatistics(), Other()), ["t"]).device_ready


def _folder(root):
    from PIL import Image

    from calib.data.classes import wnid_to_index

    rng = np.random.default_rng(0)
    for i, wnid in enumerate(sorted(wnid_to_index())[:3] * 5):
        (root / wnid).mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (40 + 3 * i, 50 + i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / wnid / f"img_{i}.JPEG")
    return root


@gpu
@pytest.mark.gpu
def test_gpu_statistics_within_one_bin_of_cpu(tiny_classifier, tmp_path):
    import onnx

    from calib.data.dataset import Dataset
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset
    from calib.passes import observe_pass

    data = Dataset.of(imagenet_val(_folder(tmp_path)), get_preset("torchvision", 16))
    model = onnx.load(str(tiny_classifier))
    cpu, gpu_stats = TensorStatistics(), TensorStatistics()
    cpu_means, gpu_means = ChannelMeans(), ChannelMeans()
    r_cpu = observe_pass(model, data, Observers(cpu, cpu_means), batch_size=4, workers=0, progress=None)
    r_gpu = observe_pass(model, data, Observers(gpu_stats, gpu_means), batch_size=4, device="cuda:0", progress=None,
                         decoder="pil", workers=0)
    assert r_gpu.images == r_cpu.images and r_gpu.skipped == r_cpu.skipped
    assert r_gpu.tensors == r_cpu.tensors
    for name in r_cpu.tensors:
        a, b = cpu.summary(name), gpu_stats.summary(name)
        assert a.count == b.count
        width = 2.0 ** cpu._entries[name].exp / cpu.bins
        assert abs(a.max - b.max) <= width and abs(a.min - b.min) <= width
    for name, m in cpu_means.means().items():
        np.testing.assert_allclose(gpu_means.means()[name], m, rtol=1e-4, atol=1e-5)
