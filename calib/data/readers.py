"""Dataset readers: plug-ins that hand calib the model's inputs as named arrays, in the shape of ONNX
Runtime's `CalibrationDataReader` (onnxruntime.quantization.calibrate: `get_next()` returns a dict
input name -> numpy array, or None at the end; `rewind()` optional), for data that is neither a
folder of images nor a folder of .npz files (a tokenizer run over a text file, a database, a
simulator).

A reader is a `DataReader` subclass with a `name`, registered in-process with `@register_reader`
or installed through the `calib.datasets` entry-point group, on the one registry mechanism
(`calib.plugins`), e.g.

    [project.entry-points."calib.datasets"]
    squad = "my_pkg.readers:SquadReader"

`--dataset NAME` picks it. calib constructs it as `Reader(data_dir=..., inputs=...)`: `data_dir`
is `--data-dir` (None when not given; `--eval-data-dir` makes a second reader, for the
evaluation set), `inputs` the model's inputs as calib runs them (`calib.data.arrays.ArrayInput`:
name, dtype, one sample's shape, the batch axis), so a reader can size what it makes. Each feed may
be one sample (arrays without the batch axis) or a batch (rows along axis 0), as in a .npz file;
every feed is checked against the model's inputs like one (a missing input or a wrong shape is one
line naming the feed).

calib reads a reader once, to its end, and holds its samples in memory (`ReaderSource`): the
seeded calibration sample and the evaluation set are then drawn from them as from a folder, and
no reader needs to rewind. Samples are named `<reader>#<index>` and fingerprinted by their
contents, so the cache key changes when the data does.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import numpy as np

from calib.data.arrays import ArrayFeed, ArrayInput, ArraySource
from calib.data.sources import UNLABELED, Sample
from calib.errors import CalibError
from calib.plugins import Registry

ENTRY_POINT_GROUP = "calib.datasets"
MAX_FEEDS = 1_000_000   # a reader whose get_next never returns None must still end


class DataReader(ABC):
    """ONNX Runtime's CalibrationDataReader, as calib constructs it (see the module docstring)."""

    name: ClassVar[str]

    def __init__(self, data_dir: str | None = None, inputs: Sequence[ArrayInput] = ()) -> None:
        self.data_dir = data_dir
        self.inputs = tuple(inputs)

    @abstractmethod
    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed (input name -> array: one sample or a batch), or None when done."""

    def rewind(self) -> None:
        """Start again from the first feed (optional, as in ONNX Runtime; calib reads a reader once)."""


_registry: Registry[type[DataReader]] = Registry("dataset reader", DataReader, ENTRY_POINT_GROUP)


def register_reader(cls: type[DataReader]) -> type[DataReader]:
    """Class decorator: make a reader available as `--dataset <cls.name>` (in-process registration)."""
    return _registry.register(cls)


def available_readers() -> list[str]:
    """Readers registered in-process and installed as plug-ins, sorted."""
    return _registry.names()


def reader_class(name: str) -> type[DataReader]:
    return _registry.get(name)


def reload_plugins() -> None:
    """Forget discovered entry points; the next query scans them again."""
    _registry.reload_plugins()


class ReaderSource(ArraySource):
    """Every sample a reader gives, held in memory (see the module docstring)."""

    def __init__(self, name: str, data_dir: str | None, feed: ArrayFeed):
        cls = reader_class(name)
        try:
            reader = cls(data_dir=data_dir, inputs=feed.inputs)
        except CalibError:
            raise
        except Exception as e:   # a plug-in may fail in any way: one line naming it
            raise CalibError(f"dataset reader '{name}' failed to start: {type(e).__name__}: {e}") from None
        parts: dict[str, list[np.ndarray]] = {n: [] for n in feed.names}
        count = 0
        for index in range(MAX_FEEDS + 1):
            where = f"dataset reader '{name}', feed {index}"
            try:
                item = reader.get_next()
            except CalibError:
                raise
            except Exception as e:
                raise CalibError(f"{where}: get_next() failed: {type(e).__name__}: {e}") from None
            if item is None:
                break
            if index == MAX_FEEDS:
                raise CalibError(f"dataset reader '{name}' gave more than {MAX_FEEDS} feeds: get_next() must return "
                                 f"None at the end")
            if not isinstance(item, dict):
                raise CalibError(f"{where}: get_next() returned a {type(item).__name__}, not a dict input name -> "
                                 f"numpy array (or None at the end)")
            rows = feed.rows(item, where)
            for n, a in rows.items():
                parts[n].append(a)
            count += len(next(iter(rows.values())))
        if not count:
            raise CalibError(f"dataset reader '{name}' gave no samples" + (f" from {data_dir}" if data_dir else ""))
        self.arrays = {n: np.concatenate(p) for n, p in parts.items()}
        self.digests = [_digest({n: a[i] for n, a in self.arrays.items()}) for i in range(count)]
        samples = [Sample(f"{name}#{i}", UNLABELED) for i in range(count)]
        self.index = {s.key: i for i, s in enumerate(samples)}
        where = f" from {data_dir}" if data_dir else ""
        super().__init__(samples, name, feed, f"{count} samples of dataset reader '{name}'{where}")
        self.root = data_dir

    def origin(self, sample: Sample) -> str:
        """By content: two readers (--data-dir and --eval-data-dir) giving the same arrays give the
        same sample."""
        return f"{self.id}#{self.digests[self.index[sample.key]]}"

    def fingerprint(self, samples: list[Sample] | None = None) -> str:
        h = hashlib.sha256()
        for s in samples if samples is not None else self.samples:
            h.update(f"{s.key}\t{self.digests[self.index[s.key]]}\n".encode())
        return h.hexdigest()

    def read(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        rows = [self.index[s.key] for s in samples]
        return {n: a[rows] for n, a in self.arrays.items()}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, a in arrays.items():
        h.update(f"{name}\t{a.dtype}\t{a.shape}\n".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]
