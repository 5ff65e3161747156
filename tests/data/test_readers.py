"""Dataset readers (calib.data.readers): ONNX Runtime's CalibrationDataReader shape, registered
in-process on calib.plugins' registry, read once to the end, each feed checked like a .npz file."""

from __future__ import annotations

import numpy as np
import pytest

from calib.data.arrays import ArrayFeed, ArrayInput, iter_arrays
from calib.data.dataset import Dataset, split
from calib.data.readers import ENTRY_POINT_GROUP, DataReader, ReaderSource, _registry, available_readers, register_reader
from calib.errors import CalibError

FEED = ArrayFeed((ArrayInput("tokens", "int64", (3,)), ArrayInput("mask", "int64", (3,))))


@pytest.fixture()
def registered():
    """Readers registered for one test, then forgotten (the registry is process-wide)."""
    names = []

    def add(cls):
        names.append(cls.name)
        return register_reader(cls)

    yield add
    for name in names:
        _registry._registered.pop(name, None)
        _registry._loaded.pop(name, None)


def _reader(name: str, feeds):
    class Reader(DataReader):
        def __init__(self, data_dir=None, inputs=()):
            super().__init__(data_dir, inputs)
            self.feeds = iter(feeds(self) if callable(feeds) else feeds)

        def get_next(self):
            return next(self.feeds, None)

    Reader.name = name
    return Reader


def _failing():
    raise ValueError("boom")
    yield   # a generator: the error comes with the first get_next()


def test_a_reader_is_read_to_its_end_and_its_batches_become_samples(registered):
    seen = {}

    def feeds(reader):
        seen["args"] = (reader.data_dir, [i.name for i in reader.inputs])
        yield {"tokens": np.arange(3), "mask": np.ones(3, np.int32)}                          # one sample
        yield {"tokens": np.arange(6).reshape(2, 3) + 10, "mask": np.ones((2, 3), bool)}     # a batch of 2

    registered(_reader("toy-reader", feeds))
    assert "toy-reader" in available_readers() and ENTRY_POINT_GROUP == "calib.datasets"
    source = ReaderSource("toy-reader", "/some/dir", FEED)
    assert seen["args"] == ("/some/dir", ["tokens", "mask"])   # --data-dir and the model's inputs
    assert [s.key for s in source.samples] == ["toy-reader#0", "toy-reader#1", "toy-reader#2"]
    (batch,) = iter_arrays(Dataset.of(source, FEED), 4)
    assert batch.images["tokens"].tolist() == [[0, 1, 2], [10, 11, 12], [13, 14, 15]]
    assert batch.images["mask"].dtype == np.int64
    cal, ev = split(Dataset.of(source, FEED), 1, seed=0)
    assert len(cal) == 1 and len(ev) == 2


def test_the_fingerprint_and_origin_follow_the_contents(registered):
    one = np.ones(3, np.int64)
    a = [{"tokens": np.arange(3), "mask": one}] * 2
    b = [{"tokens": np.arange(3) + 1, "mask": one}, {"tokens": np.arange(3), "mask": one}]
    registered(_reader("reader-a", a))
    registered(_reader("reader-b", b))
    sa, sb = ReaderSource("reader-a", None, FEED), ReaderSource("reader-a", None, FEED)
    assert sa.fingerprint() == sb.fingerprint()
    other = ReaderSource("reader-b", None, FEED)
    assert other.fingerprint() != sa.fingerprint()
    # Identical arrays are the same sample, whichever position they come in.
    assert sa.origin(sa.samples[0]) == sa.origin(sa.samples[1])


@pytest.mark.parametrize("feeds, words", [
    ([["not", "a", "dict"]], ["feed 0", "returned a list", "dict input name"]),
    ([{"tokens": np.arange(3)}], ["feed 0: no array for the model's input mask"]),
    ([], ["gave no samples"]),
    (lambda r: _failing(), ["feed 0: get_next() failed: ValueError: boom"]),
])
def test_a_bad_reader_is_one_line_naming_it(registered, feeds, words):
    registered(_reader("bad-reader", feeds))
    with pytest.raises(CalibError) as e:
        ReaderSource("bad-reader", None, FEED)
    assert "\n" not in str(e.value) and "bad-reader" in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_reader_that_fails_to_start_is_one_line(registered):
    class Broken(DataReader):
        name = "broken-reader"

        def __init__(self, data_dir=None, inputs=()):
            raise FileNotFoundError("no such corpus")

        def get_next(self):
            return None

    registered(Broken)
    with pytest.raises(CalibError, match="dataset reader 'broken-reader' failed to start: FileNotFoundError"):
        ReaderSource("broken-reader", None, FEED)


def test_only_datareaders_with_a_name_register():
    class NoName(DataReader):
        def get_next(self):
            return None

    with pytest.raises(TypeError):
        register_reader(NoName)
    with pytest.raises(TypeError):
        register_reader(dict)
