"""calib.distributed: the sharding plan, exact merging, and (with two GPUs) bit-identical results."""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators.channel_means import ChannelMeans
from calib.calibrators.statistics import TensorStatistics
from calib.data.dataset import Dataset
from calib.data.sources import ImageSource, Sample
from calib.distributed import parse_devices, replay_means, shard_batches, shard_dataset
from calib.errors import CalibError


def _gpus() -> int:
    try:
        import torch

        from calib.backends.ort import cuda_provider_available
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() and cuda_provider_available() else 0


two_gpus = pytest.mark.skipif(_gpus() < 2, reason="needs two NVIDIA GPUs and onnxruntime-gpu")


def test_parse_devices():
    assert parse_devices("cuda") == ["cuda:0"]
    assert parse_devices("cuda:1") == ["cuda:1"]
    assert parse_devices("cuda:0,1") == ["cuda:0", "cuda:1"]
    for bad in ("cpu", "cuda:0,0", "cuda:a"):
        with pytest.raises(CalibError):
            parse_devices(bad)


@pytest.mark.parametrize("count, batch, world", [(10, 3, 2), (9, 3, 2), (1, 4, 3), (100, 7, 4), (0, 2, 2)])
def test_shards_cover_every_batch_once_round_robin(count, batch, world):
    plan = shard_batches(count, batch, world)
    assert len(plan) == world
    flat = sorted(b for shard in plan for b in shard)
    assert flat == list(range(-(-count // batch)))
    for rank, shard in enumerate(plan):
        assert all(b % world == rank for b in shard)


def test_shard_dataset_rebuilds_the_same_batches():
    samples = [Sample(f"k{i}", i) for i in range(23)]
    data = Dataset(ImageSource(samples, "t"), None, samples)
    batch = 5
    single = [samples[i:i + batch] for i in range(0, 23, batch)]
    for world in (1, 2, 3):
        for rank, batches in enumerate(shard_batches(23, batch, world)):
            shard = shard_dataset(data, batch, batches).samples
            chunks = [shard[i:i + batch] for i in range(0, len(shard), batch)]
            assert chunks == [single[b] for b in batches]


def test_merged_shards_equal_one_pass_exactly():
    rng = np.random.default_rng(0)
    # Batches whose range grows, so shards fold their histograms at different times.
    batches = [rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * (1.5 ** i) for i in range(9)]
    single = TensorStatistics()
    for b in batches:
        single.observe("x", b)
    for world in (2, 3):
        merged = TensorStatistics()
        for rank, shard in enumerate(shard_batches(len(batches) * 4, 4, world)):
            part = TensorStatistics()
            for i in shard:
                part.observe("x", batches[i])
            merged.merge(part)
        a, b = single.state_dict()["tensors"]["x"], merged.state_dict()["tensors"]["x"]
        assert (a["min"], a["max"], a["count"], a["exp"]) == (b["min"], b["max"], b["count"], b["exp"])
        np.testing.assert_array_equal(a["counts"], b["counts"])


def test_replayed_means_add_in_one_gpu_order():
    rng = np.random.default_rng(1)
    sums = [rng.standard_normal(6) * 10.0 ** rng.integers(-8, 8) for _ in range(11)]
    single = ChannelMeans()
    for s in sums:  # what one GPU does: batch after batch
        single.sums["t"] = single.sums["t"] + s if "t" in single.sums else s.copy()
        single.counts["t"] = single.counts.get("t", 0) + 3
    plan = shard_batches(11, 1, 3)
    logs = [[(local, "t", sums[g], 3) for local, g in enumerate(batches)] for batches in plan]
    merged = ChannelMeans()
    replay_means(merged, logs, plan)
    assert merged.sums["t"].tobytes() == single.sums["t"].tobytes()
    assert merged.counts == single.counts


@two_gpus
@pytest.mark.gpu
def test_two_gpus_give_one_gpus_statistics_and_predictions(tiny_classifier, tmp_path):
    import onnx
    from PIL import Image

    from calib.backends.ort import OrtRunner
    from calib.calibrators.channel_means import Observers
    from calib.collect_gpu import collect_gpu
    from calib.data.classes import wnid_to_index
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset
    from calib.distributed import collect_multi, evaluate_device, evaluate_multi

    rng = np.random.default_rng(0)
    for i, wnid in enumerate(sorted(wnid_to_index())[:3] * 7):
        (tmp_path / wnid).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8)).save(tmp_path / wnid / f"i{i}.JPEG")
    data = Dataset.of(imagenet_val(tmp_path), get_preset("torchvision", 16))
    model = onnx.load(str(tiny_classifier))
    single, means = TensorStatistics(), ChannelMeans()
    r = collect_gpu(model, data, Observers(single, means), 4, "cuda:0", None, None)
    merged, merged_means, result, _ = collect_multi(model, data, ["cuda:0", "cuda:1"], 4)
    assert result.images == r.images
    a, b = single.state_dict(), merged.state_dict()
    assert list(a["tensors"]) == list(b["tensors"])
    for name in a["tensors"]:
        np.testing.assert_array_equal(a["tensors"][name]["counts"], b["tensors"][name]["counts"])
        assert a["tensors"][name]["max"] == b["tensors"][name]["max"]
    for name in means.sums:
        assert means.sums[name].tobytes() == merged_means.sums[name].tobytes()
    one = evaluate_device({"m": OrtRunner(tiny_classifier, device="cuda:0")}, data, 4, "cuda:0")
    two, info, _ = evaluate_multi({"m": str(tiny_classifier)}, data, ["cuda:0", "cuda:1"], 4)
    assert two.keys == one.evaluation.keys
    np.testing.assert_array_equal(two.predictions["m"].top5, one.evaluation.predictions["m"].top5)


def test_evaluate_device_runs_every_batch_at_one_shape_and_drops_the_padding(monkeypatch):
    """Short batches (the last one, one with a skipped image) are padded to the batch size, so the
    CUDA provider never re-plans; the padding's outputs reach no figure."""
    torch = pytest.importorskip("torch")
    from calib.data.gpu_stream import DeviceBatch
    from calib.distributed import evaluate_device

    rng = np.random.default_rng(0)
    sizes = [5, 4, 5, 3]   # batch 5; one image skipped in the second batch; a short last batch
    images = [torch.from_numpy(rng.standard_normal((n, 3, 2, 2)).astype(np.float32)) for n in sizes]
    labels = [rng.integers(0, 7, n) for n in sizes]
    keys = [[f"b{b}i{i}" for i in range(n)] for b, n in enumerate(sizes)]

    def fake_batches(dataset, batch_size, device, *args):
        for x, y, k in zip(images, labels, keys):
            yield DeviceBatch(x, x, y, k)

    monkeypatch.setattr("calib.collect_gpu.device_batches", fake_batches)

    class Runner:
        def __init__(self, seed):
            self.w = torch.from_numpy(np.random.default_rng(seed).standard_normal((12, 7)).astype(np.float32))
            self.shapes = []
            self.out = None

        def run_device(self, x):
            self.shapes.append(tuple(x.shape))
            if self.out is None:
                self.out = torch.empty((x.shape[0], 7))
            self.out.copy_(x.flatten(1) @ self.w)   # overwritten by the next call, as OrtRunner's buffers are
            return [self.out]

    runners = {"fp32": Runner(1), "int8": Runner(2)}
    samples = [Sample(k, 0) for ks in keys for k in ks]
    data = Dataset(ImageSource(samples, "t"), None, samples)
    for concurrent in (True, False):
        for r in runners.values():
            r.shapes = []
        out = evaluate_device(runners, data, 5, "cpu", concurrent=concurrent)
        ev = out.evaluation
        assert all(s == (5, 3, 2, 2) for r in runners.values() for s in r.shapes)
        assert ev.keys == [k for ks in keys for k in ks] and out.images == sum(sizes)
        x = torch.cat(images).flatten(1)
        for name, r in runners.items():
            want = torch.topk(x @ r.w, 5, dim=1).indices.numpy()
            np.testing.assert_array_equal(ev.predictions[name].top5, want)
        assert ev.signal.shape == (sum(sizes),)
        ref, q = x @ runners["fp32"].w, x @ runners["int8"].w
        assert out.logit_max_abs_diff["fp32/int8"] == pytest.approx(float((ref - q).abs().max()))


def test_a_set_smaller_than_a_batch_runs_at_its_own_size(monkeypatch):
    torch = pytest.importorskip("torch")
    from calib.data.gpu_stream import DeviceBatch
    from calib.distributed import evaluate_device, padded_batch

    x = torch.ones((3, 3, 2, 2))
    monkeypatch.setattr("calib.collect_gpu.device_batches",
                        lambda *a: iter([DeviceBatch(x[:2], x[:2], np.zeros(2, np.int64), ["a", "b"])]))
    shapes = []

    class Runner:
        def run_device(self, images):
            shapes.append(tuple(images.shape))
            return [images.flatten(1)[:, :6]]

    samples = [Sample(k, 0) for k in "abc"]   # the third image was skipped
    data = Dataset(ImageSource(samples, "t"), None, samples)
    evaluate_device({"fp32": Runner()}, data, 256, "cpu")
    assert shapes == [(3, 3, 2, 2)] and padded_batch(256, 3) == 3
    evaluate_device({"fp32": Runner()}, data, 256, "cpu", pad_to=5)   # a shard: the whole set's shape
    assert shapes[-1] == (5, 3, 2, 2)
