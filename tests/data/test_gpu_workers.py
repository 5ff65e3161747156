"""DecodeWorkers: batches decoded in worker processes come back in dataset order, complete, with
skips logged; a failing or dying worker is a one-line error, never a hang.

The mechanics run on the CPU here: the workers use a CPU decoder (Pillow + the CPU path's
preprocessing) handed in as `factory`, and torch.multiprocessing shares their CPU tensors through
shared memory where on a GPU it sends CUDA IPC handles. The CUDA case runs in the `gpu` tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from calib.data.dataset import Dataset
from calib.data.loader import SkipLog, iter_batches
from calib.data.transforms import get_preset
from calib.errors import CalibError

torch = pytest.importorskip("torch")


class CpuDecoder:
    """The CPU path's pixels, as a decoder with GpuDecoder's call contract."""

    def __init__(self, preprocess, device, resample, decoder) -> None:
        self.preprocess = preprocess
        self.device = device
        self.fallbacks = 0

    def __call__(self, items):
        import io

        from PIL import Image

        out, ok, bad = [], [], []
        for i, data in enumerate(items):
            try:
                image = Image.open(io.BytesIO(bytes(data)))
                image.load()
                out.append(self.preprocess(image))
                ok.append(i)
            except Exception:
                bad.append(i)
        if not out:
            return None, ok, bad
        return torch.from_numpy(np.stack(out)), ok, bad


class FailingDecoder(CpuDecoder):
    def __call__(self, items):
        raise RuntimeError("decoder exploded\nsecond line")


class DyingDecoder(CpuDecoder):
    def __call__(self, items):
        os._exit(3)


def _folder(root: Path, count: int, broken: tuple[int, ...] = ()) -> Path:
    from PIL import Image

    from calib.data.classes import wnid_to_index

    wnids = sorted(wnid_to_index())[:4]
    rng = np.random.default_rng(1)
    for i in range(count):
        folder = root / wnids[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:03d}.JPEG"
        if i in broken:
            path.write_bytes(b"not a jpeg")
            continue
        h, w = int(rng.integers(60, 140)), int(rng.integers(60, 140))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    from calib.data.sources import imagenet_val

    root = _folder(tmp_path_factory.mktemp("workers"), 23, broken=(5, 17))
    return Dataset.of(imagenet_val(root), get_preset("efficientnet-lite"))


def test_batches_come_back_in_dataset_order_with_skips(data):
    from calib.data.gpu_workers import DecodeWorkers

    ref = list(iter_batches(data, 4, workers=0))
    skips = SkipLog()
    with DecodeWorkers(data, 4, "cpu", workers=2, factory=CpuDecoder, slots=2) as pool:
        got = []
        for b in pool.batches(skips):   # a batch lives in a reused slot: copy it before the next
            b.images = b.images.clone()
            got.append(b)
    assert [b.index for b in got] == list(range(6))
    assert [k for b in got for k in b.keys] == [k for b in ref for k in b.keys]
    assert np.array_equal(np.concatenate([b.labels for b in got]), np.concatenate([b.labels for b in ref]))
    assert np.array_equal(np.concatenate([b.images.numpy() for b in got]), np.concatenate([b.images for b in ref]))
    assert sorted(Path(k).name for k in skips.skipped) == ["img_005.JPEG", "img_017.JPEG"]


def test_more_workers_than_batches(data):
    from calib.data.gpu_workers import DecodeWorkers

    small = data.subset(data.samples[:3])
    with DecodeWorkers(small, 8, "cpu", workers=4, factory=CpuDecoder) as pool:
        assert pool.workers == 1
        got = list(pool.batches())
    assert sum(len(b.keys) for b in got) == 3


def test_a_failing_worker_is_one_line(data):
    from calib.data.gpu_workers import DecodeWorkers

    with DecodeWorkers(data, 4, "cpu", workers=2, factory=FailingDecoder) as pool:
        with pytest.raises(CalibError, match="GPU decoding failed: RuntimeError: decoder exploded") as e:
            list(pool.batches())
    assert "\n" not in str(e.value)


def test_a_dead_worker_is_an_error_not_a_hang(data):
    from calib.data.gpu_workers import DecodeWorkers

    with DecodeWorkers(data, 4, "cpu", workers=2, factory=DyingDecoder, timeout=60) as pool:
        with pytest.raises(CalibError, match=r"died \(exit code 3\)"):
            list(pool.batches())


def test_closing_early_releases_the_workers(data):
    from calib.data.gpu_workers import DecodeWorkers

    pool = DecodeWorkers(data, 2, "cpu", workers=2, factory=CpuDecoder, slots=2)
    first = next(iter(pool.batches()))
    assert first.index == 0
    pool.close()
    assert not any(p.is_alive() for p in pool._procs)


def test_default_worker_count(monkeypatch):
    from calib.data.gpu_workers import default_decode_workers

    monkeypatch.delenv("CALIB_GPU_DECODE_WORKERS", raising=False)
    assert default_decode_workers(500, 256) == 0
    assert default_decode_workers(50_000, 256) == 2
    monkeypatch.setenv("CALIB_GPU_DECODE_WORKERS", "3")
    assert default_decode_workers(500, 256) == 3
    monkeypatch.setenv("CALIB_GPU_DECODE_WORKERS", "many")
    with pytest.raises(CalibError, match="whole number"):
        default_decode_workers(500, 256)
