"""calib.data.host_decode: worker processes run the CPU path's preprocessing into shared slots."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from calib.data.host_decode import HostDecoder, default_gpu_workers
from calib.data.transforms import get_preset, pil_pixels, pil_rows

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and anonymous shared memory")


def _image(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Files of every kind the CPU path meets, and what it makes of each."""
    from calib.data.classes import wnid_to_index
    from calib.data.dataset import Dataset
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset

    root = tmp_path_factory.mktemp("host-decode")
    d = root / sorted(wnid_to_index())[0]
    d.mkdir()
    _image(64, 48, seed=1).save(d / "a_rgb.JPEG", quality=90)
    _image(40, 70, "L", seed=2).save(d / "b_gray.JPEG")
    _image(33, 17, seed=3).save(d / "c_progressive.JPEG", progressive=True)
    _image(20, 30, seed=4).save(d / "d.png")
    _image(25, 25, seed=5).convert("CMYK").save(d / "e_cmyk.JPEG")
    _image(30, 20, seed=6).convert("RGBA").save(d / "f_alpha.png")
    data = (d / "a_rgb.JPEG").read_bytes()
    (d / "g_cut.JPEG").write_bytes(data[:len(data) // 2])
    (d / "h_junk.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for i in range(12):
        _image(50 + i, 40 + 2 * i, seed=10 + i).save(d / f"z_{i:02d}.JPEG")
    dataset = Dataset.of(imagenet_val(root), get_preset("efficientnet-lite"))

    def cpu(sample):
        try:
            return dataset.preprocess.pixels(dataset.source.open(sample))
        except Exception:
            return None

    return dataset, [cpu(s) for s in dataset.samples]


def _run(decoder: HostDecoder, samples, batch: int):
    """Every batch submitted two ahead, as the GPU stream does; -> {index: (S, S, 3) crop}."""
    chunks = [samples[i:i + batch] for i in range(0, len(samples), batch)]
    got, pending = {}, []
    for k, chunk in enumerate(chunks):
        pending.append((k, decoder.submit(chunk)))
        if len(pending) == 2 or k == len(chunks) - 1:
            while pending and (len(pending) == 2 or k == len(chunks) - 1):
                j, p = pending.pop(0)
                rows, ok = decoder.upload(p, torch.device("cpu"))
                assert rows is None or len(rows) == len(ok)
                for i, row in zip(ok, rows if rows is not None else []):
                    got[j * batch + i] = row.numpy().copy()
    return got


def test_every_image_gets_the_cpu_paths_pixels_or_is_skipped(folder):
    dataset, expected = folder
    with HostDecoder(dataset.source, dataset.preprocess, 5, workers=2, slots=3) as decoder:
        got = _run(decoder, dataset.samples, 5)
    assert sorted(got) == [i for i, e in enumerate(expected) if e is not None]
    assert len(got) < len(expected)   # the cut and the junk file are skipped, as on the CPU
    for i, pixels in got.items():
        assert pixels.shape == (224, 224, 3)
        np.testing.assert_array_equal(pixels, expected[i])


def test_crops_normalised_in_torch_are_the_cpu_paths_batch(folder):
    """The GPU path's last step (torch float32 ops) against the CPU path's numpy ones, bit for bit."""
    from calib.data.gpu_decode import normalise_rows

    dataset, expected = folder
    rows = np.stack([e for e in expected if e is not None])
    got = normalise_rows(torch.from_numpy(rows), dataset.preprocess).numpy()
    want = np.stack([dataset.preprocess(dataset.source.open(s)) for s, e in zip(dataset.samples, expected)
                     if e is not None])
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_the_crop_follows_the_preset(folder):
    dataset, _ = folder
    pre = get_preset("torchvision", 96)
    with HostDecoder(dataset.source, pre, 4, workers=1) as decoder:
        rows, ok = decoder.upload(decoder.submit(dataset.samples[:4]), torch.device("cpu"))
    assert rows.shape == (4, 96, 96, 3)
    for row, sample in zip(rows, dataset.samples[:4]):
        np.testing.assert_array_equal(row.numpy(), pre.pixels(dataset.source.open(sample)))


def test_a_batch_where_nothing_decodes(folder, tmp_path):
    from calib.data.sources import Sample

    dataset, _ = folder
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"junk")
    with HostDecoder(dataset.source, dataset.preprocess, 2, workers=1) as decoder:
        packed, ok = decoder.upload(decoder.submit([Sample(str(bad), 0), Sample(str(tmp_path / "gone.JPEG"), 0)]),
                                    torch.device("cpu"))
    assert packed is None and ok == []


def test_a_worker_that_dies_is_a_one_line_error(folder):
    import os
    import signal

    from calib.errors import CalibError

    dataset, _ = folder
    with HostDecoder(dataset.source, dataset.preprocess, 4, workers=1) as decoder:
        os.kill(decoder.pool.procs[0].pid, signal.SIGKILL)
        decoder.pool.procs[0].join(5)
        with pytest.raises(CalibError, match="ended unexpectedly") as info:
            decoder.upload(decoder.submit(dataset.samples[:4]), torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_default_workers_leave_room_and_split_between_gpus(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_gpu_workers() == 14             # two cores for the threads that feed the GPU
    assert default_gpu_workers(share=2) == 6       # (16 - 2 x 2) // 2 per GPU
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert default_gpu_workers(share=4) == 1


def test_pil_rows_and_pixels_are_the_same_rgb():
    im = _image(5, 4, "L")
    rows, planes = pil_rows(im), pil_pixels(im)
    assert rows.shape == (4, 5, 3) and planes.shape == (3, 4, 5) and planes.flags.c_contiguous
    np.testing.assert_array_equal(planes, rows.transpose(2, 0, 1))
    np.testing.assert_array_equal(planes[0], np.asarray(im))


def test_workers_run_at_a_lower_priority(folder):
    """They must not take cores from the threads that launch the models."""
    import os

    from calib.data import host_decode

    dataset, _ = folder
    with HostDecoder(dataset.source, dataset.preprocess, 2, workers=1) as decoder:
        decoder.upload(decoder.submit(dataset.samples[:2]), torch.device("cpu"))
        pid = decoder.pool.procs[0].pid
        assert os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + min(
            host_decode.WORKER_NICE, 19 - os.getpriority(os.PRIO_PROCESS, 0))


def test_more_batches_in_flight_than_slots_is_refused(folder):
    from calib.errors import InternalError

    dataset, _ = folder
    with HostDecoder(dataset.source, dataset.preprocess, 2, workers=1, slots=2) as decoder:
        first = decoder.submit(dataset.samples[:2])
        decoder.submit(dataset.samples[2:4])
        with pytest.raises(InternalError, match="more than 2 batches"):
            decoder.submit(dataset.samples[4:6])   # would reuse the first slot while it is being written
        rows, ok = decoder.upload(first, torch.device("cpu"))
        assert ok == [0, 1] and rows.shape[0] == 2


def test_a_decoder_dropped_without_close_stops_its_workers(folder):
    import gc

    dataset, _ = folder
    decoder = HostDecoder(dataset.source, dataset.preprocess, 2, workers=2)
    procs = list(decoder.pool.procs)
    assert all(p.is_alive() for p in procs)
    del decoder
    gc.collect()
    for p in procs:
        p.join(5)
    assert not any(p.is_alive() for p in procs)


def test_close_twice_is_harmless(folder):
    dataset, _ = folder
    decoder = HostDecoder(dataset.source, dataset.preprocess, 2, workers=1)
    decoder.close()
    decoder.close()
    assert decoder.slots[0].tensor is None
