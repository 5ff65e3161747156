"""Named arrays as a dataset (calib.data.arrays): the feed's checks, a folder of .npz/.npy files
(one sample or one batch per file, decided by rank), batches in sample order, and the seeded
sampling and split of image folders applied to samples."""

from __future__ import annotations

import numpy as np
import pytest

from calib.data.arrays import ArrayFeed, ArrayInput, iter_arrays, npz_folder
from calib.data.dataset import Dataset, split, take
from calib.errors import CalibError

FEED = ArrayFeed((ArrayInput("input_ids", "int64", (4,)), ArrayInput("attention_mask", "int64", (4,)),
                  ArrayInput("scale", "float32", (2, 3))))


def _sample(i: int, n: int | None = None) -> dict[str, np.ndarray]:
    lead = () if n is None else (n,)
    return {"input_ids": np.full((*lead, 4), i, np.int32), "attention_mask": np.ones((*lead, 4), bool),
            "scale": np.full((*lead, 2, 3), i / 10, np.float64)}


@pytest.fixture()
def folder(tmp_path):
    """Two single-sample files, a batch of 3 in a subfolder, one hidden file, one unrelated file."""
    root = tmp_path / "feeds"
    (root / "b").mkdir(parents=True)
    np.savez(root / "s1.npz", **_sample(1))
    np.savez(root / "s0.npz", **_sample(0))
    batch = _sample(2, 3)
    batch["input_ids"][1:] = [[3] * 4, [4] * 4]
    np.savez(root / "b" / "batch.npz", **batch, extra=np.zeros(7))   # an array the model does not take
    np.savez(root / ".hidden.npz", junk=np.zeros(1))
    (root / "notes.txt").write_text("not read")
    return root


def test_the_feed_decides_one_sample_or_a_batch_by_rank():
    assert FEED.check({k: (v.shape, v.dtype) for k, v in _sample(0).items()}, "x") is None
    assert FEED.check({k: (v.shape, v.dtype) for k, v in _sample(0, 5).items()}, "x") == 5
    rows = FEED.rows(_sample(7), "x")
    assert {k: (v.shape, v.dtype) for k, v in rows.items()} == {
        "input_ids": ((1, 4), np.int64), "attention_mask": ((1, 4), np.int64), "scale": ((1, 2, 3), np.float32)}
    zeros = FEED.zeros(2)
    assert zeros["scale"].shape == (2, 2, 3) and zeros["input_ids"].dtype == np.int64
    assert FEED.params == {"name": "arrays", "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [4]},
                                                        {"name": "attention_mask", "dtype": "int64", "shape": [4]},
                                                        {"name": "scale", "dtype": "float32", "shape": [2, 3]}]}


@pytest.mark.parametrize("change, words", [
    (lambda a: a.pop("attention_mask"), ["f.npz: no array for the model's input attention_mask", "it holds input_ids, scale"]),
    (lambda a: a.update(input_ids=np.zeros((2, 2, 4), np.int64)), ["input_ids has shape (2, 2, 4)", "(batch, 4)", "(4,)"]),
    (lambda a: a.update(input_ids=np.zeros(5, np.int64)), ["input_ids has shape (5,)"]),
    (lambda a: a.update(input_ids=np.zeros(4, np.float32)), ["input_ids holds float32 values", "takes int64"]),
    (lambda a: a.update(scale=np.zeros((2, 3), np.int64)), ["scale holds int64 values", "takes float32 (float values)"]),
    (lambda a: a.update(input_ids=np.zeros((3, 4), np.int64)), ["disagree", "input_ids 3 rows", "attention_mask one sample"]),
    (lambda a: a.update({k: v[:0] for k, v in _sample(0, 1).items()}), ["no rows"]),
])
def test_the_feed_refuses_in_one_line_naming_the_file_and_the_input(change, words):
    arrays = _sample(0)
    change(arrays)
    with pytest.raises(CalibError) as e:
        FEED.rows(arrays, "f.npz")
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_folder_is_searched_recursively_in_sorted_order_and_batches_become_rows(folder):
    source = npz_folder(folder, FEED)
    rel = [source.relative_key(s) for s in source.samples]
    assert rel == ["b/batch.npz#0", "b/batch.npz#1", "b/batch.npz#2", "s0.npz", "s1.npz"]
    assert all(s.label == -1 for s in source.samples) and source.noun == "samples"
    batches = list(iter_arrays(Dataset.of(source, FEED), 2))
    assert [b.keys for b in batches] == [[s.key for s in source.samples[i:i + 2]] for i in (0, 2, 4)]
    ids = np.concatenate([b.images["input_ids"][:, 0] for b in batches])
    assert ids.tolist() == [2, 3, 4, 0, 1] and batches[0].images["input_ids"].dtype == np.int64
    assert batches[-1].images["scale"].dtype == np.float32 and batches[-1].images["scale"].shape == (1, 2, 3)
    assert set(batches[0].images) == {"input_ids", "attention_mask", "scale"}   # "extra" is not fed


def test_samples_are_sampled_and_split_as_image_folders_are(folder):
    data = Dataset.of(npz_folder(folder, FEED), FEED)
    cal, ev = split(data, 2, seed=3)
    assert len(cal) == 2 and len(ev) == 3 and not {s.key for s in cal.samples} & {s.key for s in ev.samples}
    assert cal.samples == split(data, 2, seed=3)[0].samples                     # seeded
    order = [s.key for s in data.samples]
    assert [order.index(s.key) for s in take(data, 3, seed=1).samples] == sorted(
        order.index(s.key) for s in take(data, 3, seed=1).samples)              # kept in sample order
    with pytest.raises(CalibError, match="all 5 samples of npz are used for calibration"):
        split(data, 5)


def test_the_fingerprint_follows_the_files_contents(folder):
    before = npz_folder(folder, FEED).fingerprint()
    assert npz_folder(folder, FEED).fingerprint() == before
    np.savez(folder / "s0.npz", **_sample(9))
    assert npz_folder(folder, FEED).fingerprint() != before


def test_a_npy_file_feeds_a_model_with_one_input(tmp_path):
    feed = ArrayFeed((ArrayInput("x", "float32", (3,)),))
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float64).reshape(2, 3))
    np.save(tmp_path / "b.npy", np.ones(3, np.float32))
    source = npz_folder(tmp_path, feed)
    assert len(source) == 3
    (batch,) = iter_arrays(Dataset.of(source, feed), 8)
    assert batch.images["x"].tolist() == [[0, 1, 2], [3, 4, 5], [1, 1, 1]]
    assert source.content_path(source.samples[2]) == str(tmp_path / "b.npy")   # a whole file: compared by bytes
    assert source.content_path(source.samples[0]) is None                       # a row of a batch


def test_files_that_are_not_numpys_formats_are_one_line(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibError, match="bad.npz is not a readable .npz file"):
        npz_folder(tmp_path, FEED)
    (tmp_path / "bad.npz").unlink()
    np.savez(tmp_path / "obj.npz", input_ids=np.array([object()]), attention_mask=np.zeros(4), scale=np.zeros((2, 3)))
    with pytest.raises(CalibError, match="Python objects"):
        npz_folder(tmp_path, FEED)


def test_arrays_stream_to_a_gpu_or_say_in_one_line_why_not(folder):
    """The GPU path of named arrays: it imported its device check from a module that no longer had
    it, so every npz run on a GPU ended in an ImportError."""
    torch = pytest.importorskip("torch")
    dataset = Dataset.of(npz_folder(folder, FEED), FEED)
    if not torch.cuda.is_available():
        with pytest.raises(CalibError, match="CUDA"):
            next(iter_arrays(dataset, 2, device="cuda:0"))
        return
    batch = next(iter_arrays(dataset, 2, device="cuda:0"))
    assert batch.images["input_ids"].device.type == "cuda" and batch.images["input_ids"].dtype == torch.int64
