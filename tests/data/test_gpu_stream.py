"""GpuBatchStream: decode workers -> pinned host -> device, double-buffered.

The `gpu` tests need CUDA (skipped without it). They read an ImageNet-layout folder named by
CALIB_GPU_IMAGES (default `.gpu-images`), and fall back to images generated here, so they run on
any machine with CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from calib.data.dataset import Dataset, take
from calib.data.loader import iter_batches
from calib.data.transforms import get_preset
from calib.errors import CalibError


def _cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


gpu = pytest.mark.skipif(not _cuda(), reason="needs an NVIDIA GPU with CUDA")


def _generated_images(root: Path, count: int = 37) -> Path:
    from PIL import Image

    from calib.data.classes import wnid_to_index

    wnids = sorted(wnid_to_index())[:3]
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / wnids[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mode = ("RGB", "L", "RGBA")[i % 3]
        image = Image.fromarray(pixels).convert(mode)
        image.save(folder / f"img_{i:03d}.{'png' if mode == 'RGBA' else 'JPEG'}")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    from calib.data.sources import imagenet_val

    folder = Path(os.environ.get("CALIB_GPU_IMAGES", ".gpu-images"))
    if not folder.is_dir():
        folder = _generated_images(tmp_path_factory.mktemp("gpu-images"))
    data = Dataset.of(imagenet_val(folder), get_preset("efficientnet-lite"))
    return take(data, 61)   # an odd count: the last batch is partial for every batch size below


def test_without_cuda_is_a_one_line_error(monkeypatch):
    import torch

    from calib.data.gpu_stream import GpuBatchStream

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CalibError) as info:
        GpuBatchStream(Dataset(None, None, []), 8)
    message = str(info.value)
    assert "\n" not in message
    assert "needs an NVIDIA GPU with CUDA" in message and "iter_batches" in message


def test_bad_arguments_are_errors():
    from calib.data.gpu_stream import GpuBatchStream

    with pytest.raises(CalibError, match="CUDA device, not 'cpu'"):
        GpuBatchStream(Dataset(None, None, []), 8, device="cpu")
    with pytest.raises(CalibError, match="batch size"):
        GpuBatchStream(Dataset(None, None, []), 0)
    with pytest.raises(CalibError, match="depth"):
        GpuBatchStream(Dataset(None, None, []), 8, depth=1)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("workers, batch_size, depth", [(0, 8, 2), (2, 16, 2), (2, 7, 3)])
def test_device_batches_equal_cpu_batches_bit_for_bit(dataset, workers, batch_size, depth):
    import torch

    from calib.data.gpu_stream import GpuBatchStream

    cpu = list(iter_batches(dataset, batch_size, workers=0))
    with GpuBatchStream(dataset, batch_size, workers=workers, depth=depth) as stream:
        got = []
        for batch in stream:
            assert batch.images.is_cuda and batch.images.dtype == torch.float32
            assert batch.buffer.shape[0] == batch_size and batch.images.shape[0] == batch.size
            got.append((batch.images.cpu(), batch.labels.copy(), list(batch.keys)))
    assert len(got) == len(cpu)
    for (images, labels, keys), want in zip(got, cpu):
        assert torch.equal(images, torch.from_numpy(want.images))     # bit for bit
        assert np.array_equal(labels, want.labels) and keys == want.keys
    keys = [k for _, _, ks in got for k in ks]
    assert keys == [s.key for s in dataset.samples]                      # each image once, in order
    assert got[-1][0].shape[0] == len(dataset) % batch_size              # the partial last batch


@gpu
@pytest.mark.gpu
def test_buffers_are_not_reused_while_the_consumer_still_reads_them(dataset):
    """Each batch is read by a kernel queued behind a ~20 ms GPU sleep: if the stream overwrote
    a slot before the consumer's stream finished with it, the sums would be of later batches."""
    import torch

    from calib.data.gpu_stream import GpuBatchStream

    want = [float(b.images.astype(np.float64).sum()) for b in iter_batches(dataset, 8, workers=0)]
    sums = []
    with GpuBatchStream(dataset, 8, workers=2) as stream:
        for batch in stream:
            torch.cuda._sleep(20_000_000)
            sums.append(batch.images.double().sum())
    torch.cuda.synchronize()
    assert [float(s) for s in sums] == pytest.approx(want, rel=1e-9)


@gpu
@pytest.mark.gpu
def test_get_batch_gives_fixed_size_buffers_with_valid_counts(dataset):
    import torch

    from calib.data.gpu_stream import GpuBatchStream

    batch_size = 16
    cpu = list(iter_batches(dataset, batch_size, workers=0))
    stream = GpuBatchStream(dataset, batch_size, workers=2)
    try:
        seen = 0
        for want in cpu:
            pointer, valid = stream.get_batch()
            buffer = stream.current.buffer
            assert isinstance(pointer, int) and pointer == buffer.data_ptr()
            assert buffer.shape[0] == batch_size and valid == len(want.keys)
            assert torch.equal(buffer[:valid].cpu(), torch.from_numpy(want.images))
            assert not buffer[valid:].any()       # the tail of a partial batch is zero
            seen += valid
        assert stream.get_batch() is None
        assert seen == len(dataset)
        stream.reset()
        pointer, valid = stream.get_batch()           # starts over after the end
        assert valid == batch_size
    finally:
        stream.close()
