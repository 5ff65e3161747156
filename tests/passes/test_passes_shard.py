"""calib.passes.shard: the sharding plan, exact merging, and (with two GPUs) bit-identical results."""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators.channel_means import ChannelMeans
from calib.calibrators.statistics import TensorStatistics
from calib.data.dataset import Dataset
from calib.data.sources import ImageSource, Sample
from calib.passes.shard import shard_batches, shard_dataset
from calib.placement import Placement
from tests.conftest import make_image_folder


def _gpus() -> int:
    try:
        import torch

        from calib.onnx_io import cuda_provider_available
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() and cuda_provider_available() else 0


two_gpus = pytest.mark.skipif(_gpus() < 2, reason="needs two NVIDIA GPUs and onnxruntime-gpu")


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
    merged.replay(logs, plan)
    assert merged.sums["t"].tobytes() == single.sums["t"].tobytes()
    assert merged.counts == single.counts


@two_gpus
@pytest.mark.gpu
def test_two_gpus_give_one_gpus_statistics_and_predictions(tiny_classifier, tmp_path):
    import onnx
    from PIL import Image

    from calib.backends.ort import OrtRunner
    from calib.calibrators.channel_means import Observers
    from calib.data.classes import wnid_to_index
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset
    from calib.passes import evaluate, observe_pass
    from calib.passes.shard import evaluate_sharded, observe_sharded

    rng = np.random.default_rng(0)
    for i, wnid in enumerate(sorted(wnid_to_index())[:3] * 7):
        (tmp_path / wnid).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8)).save(tmp_path / wnid / f"i{i}.JPEG")
    data = Dataset.of(imagenet_val(tmp_path), get_preset("torchvision", 16))
    model = onnx.load(str(tiny_classifier))
    single, means = TensorStatistics(), ChannelMeans()
    r = observe_pass(model, data, Observers(single, means), 4, "cuda:0", None, None, None)
    merged, merged_means, result, _ = observe_sharded(model, data, Placement.parse("cuda:0,1"), 4)
    assert result.images == r.images
    a, b = single.state_dict(), merged.state_dict()
    assert list(a["tensors"]) == list(b["tensors"])
    for name in a["tensors"]:
        np.testing.assert_array_equal(a["tensors"][name]["counts"], b["tensors"][name]["counts"])
        assert a["tensors"][name]["max"] == b["tensors"][name]["max"]
    for name in means.sums:
        assert means.sums[name].tobytes() == merged_means.sums[name].tobytes()
    one, _ = evaluate({"m": OrtRunner(tiny_classifier, device="cuda:0")}, data, 4, "cuda:0")
    two, info, _ = evaluate_sharded({"m": str(tiny_classifier)}, data, Placement.parse("cuda:0,1"), 4)
    assert two.keys == one.keys
    np.testing.assert_array_equal(two.predictions["m"].top5, one.predictions["m"].top5)


def test_spawned_cpu_ranks_merge_to_one_pass(tmp_path, tiny_classifier):
    """The transport of --device cuda:0,1, with two CPU ranks: the same merge gives one process's
    statistics, channel means and predictions, bit for bit."""
    import onnx

    from calib.backends.ort import OrtRunner
    from calib.calibrators.channel_means import ChannelMeans, Observers
    from calib.calibrators.statistics import TensorStatistics
    from calib.data.dataset import Dataset
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset
    from calib.passes import evaluate, observe_pass
    from calib.passes.shard import Spawned, evaluate_sharded, observe_sharded

    data = Dataset.of(imagenet_val(make_image_folder(tmp_path / "val", 23)), get_preset("torchvision", 16))
    model = onnx.load(str(tiny_classifier))
    single, means = TensorStatistics(), ChannelMeans()
    observe_pass(model, data, Observers(single, means), 3, "cpu", None, 0, None)
    two = Spawned(("cpu", "cpu"))
    merged, merged_means, result, _ = observe_sharded(model, data, Placement(), 3, workers=0, transport=two)
    assert result.images == 23 and len(result.rank_seconds) == 2
    a, b = single.state_dict(), merged.state_dict()
    assert list(a["tensors"]) == list(b["tensors"])
    for name, entry in a["tensors"].items():
        np.testing.assert_array_equal(entry["counts"], b["tensors"][name]["counts"])
        assert (entry["min"], entry["max"], entry["count"]) == (b["tensors"][name]["min"], b["tensors"][name]["max"],
                                                                 b["tensors"][name]["count"])
    assert means.sums and all(means.sums[n].tobytes() == merged_means.sums[n].tobytes() for n in means.sums)
    one, _ = evaluate({"m": OrtRunner(tiny_classifier)}, data, 4, "cpu", workers=0)
    shared, _, _ = evaluate_sharded({"m": str(tiny_classifier)}, data, Placement(), 4, workers=0, transport=two)
    assert shared.keys == one.keys
    np.testing.assert_array_equal(shared.predictions["m"].top5, one.predictions["m"].top5)
    np.testing.assert_array_equal(shared.signal, one.signal)
