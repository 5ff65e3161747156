"""collect_gpu: the FP32 calibration pass in ONNX Runtime's CUDA provider.

On the CPU: the exposed model's shapes, and the device-side channel means against ChannelMeans.
On a GPU: the statistics match the CPU pass on the same (Pillow) inputs within one histogram bin."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import has_cuda_ort

from calib.calibrators.channel_means import ChannelMeans, Observers
from calib.calibrators.statistics import TensorStatistics


gpu = pytest.mark.skipif(not has_cuda_ort(), reason="needs an NVIDIA GPU with CUDA and onnxruntime-gpu")


def test_exposed_outputs_are_shaped(tiny_classifier):
    import onnx

    from calib.collect_gpu import exposed_with_shapes

    model = onnx.load(str(tiny_classifier))
    exposed, names = exposed_with_shapes(model, None)
    shaped = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in exposed.graph.output}
    assert "c1" in names and shaped["c1"][1:] == [8, 8, 8]
    assert all(o.type.tensor_type.HasField("shape") for o in exposed.graph.output)


def test_device_channel_means_match_channel_means():
    import torch

    from calib.collect_gpu import DeviceChannelMeans

    rng = np.random.default_rng(0)
    ref, target, log = ChannelMeans(["a"]), ChannelMeans(["a"]), []
    adapter = DeviceChannelMeans(target, log)
    for i in range(3):
        x = rng.standard_normal((4, 5, 6, 7)).astype(np.float32)
        ref.observe("a", x)
        adapter.batch = i
        adapter.observe("a", torch.from_numpy(x))
        adapter.observe("b", torch.from_numpy(x))   # not one of its tensors
    assert target.counts == ref.counts and set(target.sums) == {"a"}
    np.testing.assert_allclose(target.means()["a"], ref.means()["a"], rtol=1e-6)
    assert [entry[0] for entry in log] == [0, 1, 2]


def test_on_device_adapts_each_observer():
    from calib.calibrators import get_calibrator
    from calib.collect_gpu import DeviceChannelMeans, on_device

    stats = TensorStatistics()
    cal = get_calibrator("minmax")
    means = ChannelMeans()

    class Other:
        seen = None

        def observe(self, name, x):
            Other.seen = type(x)

    adapted = on_device(Observers(stats, cal, means, Other()))
    kinds = [type(o) for o in adapted.observers]
    assert kinds[0] is TensorStatistics and kinds[2] is DeviceChannelMeans
    import torch

    adapted.observers[3].observe("x", torch.ones(2, 2))
    assert Other.seen is np.ndarray


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

    from calib.collect import collect
    from calib.collect_gpu import collect_gpu
    from calib.data.dataset import Dataset
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset
    data = Dataset.of(imagenet_val(_folder(tmp_path)), get_preset("torchvision", 16))
    model = onnx.load(str(tiny_classifier))
    cpu, gpu_stats = TensorStatistics(), TensorStatistics()
    cpu_means, gpu_means = ChannelMeans(), ChannelMeans()
    r_cpu = collect(model, data, Observers(cpu, cpu_means), batch_size=4, workers=0, progress=None)
    r_gpu = collect_gpu(model, data, Observers(gpu_stats, gpu_means), batch_size=4, device="cuda", progress=None,
                        decode="cpu")
    assert r_gpu.images == r_cpu.images and r_gpu.skipped == r_cpu.skipped
    assert r_gpu.tensors == r_cpu.tensors
    for name in r_cpu.tensors:
        a, b = cpu.summary(name), gpu_stats.summary(name)
        assert a.count == b.count
        width = 2.0 ** cpu._entries[name].exp / cpu.bins
        assert abs(a.max - b.max) <= width and abs(a.min - b.min) <= width
    for name, m in cpu_means.means().items():
        np.testing.assert_allclose(gpu_means.means()[name], m, rtol=1e-4, atol=1e-5)
