"""Named arrays instead of images: what a model with several inputs, or with inputs that are not
images (token ids, attention masks, shapes), is calibrated and evaluated on.

Why a data path of its own: an image goes through decoding and a preprocessing preset, an array
through neither; what the two share is the rest, and that is kept: a dataset is a source (the
samples in a fixed order) plus what turns a sample into the model's input (`ArrayFeed` takes the
place of `Preprocess`: one object checks the calibration and the evaluation arrays alike, and its
`params` go into the cache key), the seeded calibration sample and the split are drawn from the
sorted sample list as for a folder of images (`calib.data.dataset`), and the batches go through
the one walk (`calib.passes`) as `Batch`es whose `images` is a mapping input name -> array.

- `ArrayInput`, `ArrayFeed`: the model's inputs as calib runs them (the intake fills them in,
  `calib.models.intake`): name, numpy dtype, one sample's dimensions (after the batch axis) and
  the batch axis (its name when dynamic, its size when the model fixes it).
- `npz_folder` (`--dataset npz --data-dir DIR`): numpy's own file formats, searched recursively
  (hidden files and folders skipped, sorted by relative path, as `image_folder` does): a `.npz`
  (`np.savez`) holds one array per input name; a `.npy` (`np.save`) feeds a model with one input.
  A file holds one sample (each array has the input's rank less one) or a batch (the input's
  rank: rows along axis 0); the rank decides, compared with the model input's. Every file's
  header (numpy's format header: shape and dtype, no data, https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html)
  is read and checked against the model when the folder is opened, so a missing input or a
  wrong shape is one line naming the file before any model runs. Arrays the model does not take
  are ignored.
- `iter_arrays`: batches in sample order, read in this process (loading a .npz is cheap beside
  running the model: no decoding workers); on a GPU each array is copied to the device.

Sources that are neither images nor files (a plug-in reader in the shape of ONNX Runtime's
`CalibrationDataReader`) are `calib.data.readers`.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from calib.data.batch import Batch
from calib.data.sources import UNLABELED, ImageSource, Sample, files_under
from calib.errors import CalibError, InternalError

ARRAY_SUFFIXES = {".npz", ".npy"}
# Array kinds (numpy's dtype.kind) each kind of model input accepts: float inputs take float arrays
# only (integers there are usually pixels that skipped their preprocessing); integer and boolean
# inputs take either (a mask saved as bool for an int64 input, token ids saved as int32).
_ACCEPTS = {"f": "f", "i": "iub", "u": "iub", "b": "biu"}
_KIND_WORDS = {"f": "float", "i": "integer", "u": "integer", "b": "boolean"}


@dataclass(frozen=True)
class ArrayInput:
    """One model input as calib feeds it: `shape` is one sample's dimensions (those after the batch
    axis), all resolved; `batch` the batch axis, its name when dynamic, its size when fixed."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    batch: str | int = "batch"

    @property
    def rank(self) -> int:
        """The model input's rank, batch axis included."""
        return 1 + len(self.shape)

    @property
    def kind(self) -> str:
        return np.dtype(self.dtype).kind

    def dims(self) -> tuple:
        """(batch, *shape), as the model declares it once resolved."""
        return (self.batch, *self.shape)

    def describe(self) -> str:
        """'input_ids (batch, 16) int64', as one-line messages name it."""
        return f"{self.name} {_fmt(self.dims())} {self.dtype}"


@dataclass(frozen=True)
class ArrayFeed:
    """The model's inputs, checked and cast the same way for every array that reaches them: the
    `Preprocess` of a dataset of named arrays."""
    inputs: tuple[ArrayInput, ...]
    name: str = "arrays"
    arrays = True   # what calib.data.decoders.decode_for asks, without importing this module

    @property
    def params(self) -> dict:
        """What the cache key records of the feed: every input's name, dtype and sample shape."""
        return {"name": self.name, "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)}
                                              for i in self.inputs]}

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def describe(self) -> str:
        return ", ".join(i.describe() for i in self.inputs)

    def check(self, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], where: str) -> int | None:
        """Check arrays given by (shape, dtype) against the inputs: the number of rows they hold,
        or None for one sample (no batch axis). A one-line CalibError naming `where` and the input
        otherwise. Arrays the model does not take are ignored."""
        rows: dict[str, int | None] = {}
        for spec in self.inputs:
            if spec.name not in specs:
                held = ", ".join(sorted(specs)) or "nothing"
                raise CalibError(f"{where}: no array for the model's input {spec.name} (it holds {held}; the model "
                                 f"takes {', '.join(self.names)})")
            shape, dtype = specs[spec.name]
            shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
            if dtype.kind not in _ACCEPTS.get(spec.kind, spec.kind):
                raise CalibError(f"{where}: {spec.name} holds {dtype} values but the model's input {spec.name} takes "
                                 f"{spec.dtype} ({_KIND_WORDS.get(spec.kind, spec.kind)} values)")
            if len(shape) == spec.rank and shape[1:] == spec.shape:
                rows[spec.name] = shape[0]
            elif len(shape) == spec.rank - 1 and shape == spec.shape:
                rows[spec.name] = None
            else:
                raise CalibError(f"{where}: {spec.name} has shape {_fmt(shape)} but the model's input is "
                                 f"{_fmt(spec.dims())}: give it as {_fmt(spec.shape)} for one sample or "
                                 f"{_fmt(('N', *spec.shape))} for a batch")
        counts = set(rows.values())
        if len(counts) > 1:
            found = ", ".join(f"{n} {'one sample' if r is None else f'{r} rows'}" for n, r in rows.items())
            raise CalibError(f"{where}: its arrays disagree on how many samples they hold ({found})")
        n = counts.pop()
        if n == 0:
            raise CalibError(f"{where}: its arrays hold no rows")
        return n

    def rows(self, arrays: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        """The model's inputs from `arrays` (one sample or a batch), checked, with a batch axis and
        in the model's dtypes."""
        n = self.check({k: (np.shape(v), np.asarray(v).dtype) for k, v in arrays.items() if k in self.names}, where)
        out = {}
        for spec in self.inputs:
            a = np.asarray(arrays[spec.name])
            out[spec.name] = np.ascontiguousarray((a if n is not None else a[None]).astype(spec.dtype, copy=False))
        return out

    def zeros(self, n: int) -> dict[str, np.ndarray]:
        """A feed of `n` samples of zeros: a probe of the model's outputs (no real data needed)."""
        return {i.name: np.zeros((n, *i.shape), i.dtype) for i in self.inputs}


def _fmt(dims: Sequence) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


class ArraySource(ImageSource):
    """A source of named arrays: `read(samples)` gives the model's inputs for those samples, stacked
    (what `open` is for an image source); its samples have no label."""

    kind = "arrays"
    noun = "samples"

    def __init__(self, samples: list[Sample], id: str, feed: ArrayFeed, description: str = ""):
        super().__init__(samples, id, description)
        self.feed = feed

    def open(self, sample: Sample):
        raise InternalError(f"{self.id} holds arrays, not images: read it with calib.data.arrays.iter_arrays")

    def read(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class NpzSource(ArraySource):
    """A folder of .npz/.npy files; a sample is a file (one sample) or one row of it (a batch).
    Keys are paths, `path#row` for rows; fingerprinted by relative path and file contents."""

    def __init__(self, root: Path, feed: ArrayFeed, files: list[tuple[Path, int | None]]):
        samples, self.where = [], {}
        for path, rows in files:
            for row in ([None] if rows is None else range(rows)):
                key = str(path) if row is None else f"{path}#{row}"
                samples.append(Sample(key, UNLABELED))
                self.where[key] = (str(path), row)
        super().__init__(samples, "npz", feed, f"{len(samples)} samples in {len(files)} .npz/.npy files under {root}")
        self.root = str(root)
        self._digests: dict[str, str] = {}

    def relative_key(self, sample: Sample) -> str:
        path, row = self.where[sample.key]
        rel = os.path.relpath(path, self.root)
        return rel if row is None else f"{rel}#{row}"

    def origin(self, sample: Sample) -> str:
        path, row = self.where[sample.key]
        return os.path.realpath(path) + ("" if row is None else f"#{row}")

    def content_path(self, sample: Sample) -> str | None:
        path, row = self.where[sample.key]
        return path if row is None else None

    def fingerprint(self, samples: list[Sample] | None = None) -> str:
        """sha256 of the ordered sample list: relative names and the files' contents (a .npz written
        again under the same name is other data)."""
        from calib.fsutil import file_sha256

        h = hashlib.sha256()
        for s in samples if samples is not None else self.samples:
            path = self.where[s.key][0]
            if path not in self._digests:
                self._digests[path] = file_sha256(path)
            h.update(f"{self.relative_key(s)}\t{self._digests[path]}\n".encode())
        return h.hexdigest()

    def read(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.feed.names}
        loaded: tuple[str, dict[str, np.ndarray]] | None = None
        for s in samples:
            path, row = self.where[s.key]
            if loaded is None or loaded[0] != path:
                loaded = (path, self.feed.rows(_load(Path(path), self.feed), path))
            for name, a in loaded[1].items():
                parts[name].append(a if row is None else a[row:row + 1])
        return {name: np.concatenate(p) for name, p in parts.items()}


def npz_folder(data_dir: str | os.PathLike | None, feed: ArrayFeed) -> NpzSource:
    """`--dataset npz --data-dir DIR`: every .npz/.npy file under DIR (hidden ones skipped), in
    sorted relative order, each header checked against `feed` (see the module docstring)."""
    if data_dir is None:
        raise CalibError("--dataset npz needs --data-dir DIR (a folder of .npz files keyed by input name, or .npy "
                         "files for a model with one input)")
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise CalibError(f"{root} is a file, not a folder of .npz/.npy files")
    if not root.is_dir():
        raise CalibError(f"data folder not found: {root}")
    found = files_under(root, ARRAY_SUFFIXES)
    if not found:
        raise CalibError(f"no .npz or .npy files in {root} (searched recursively)")
    files = [(path, feed.check(_headers(path, feed), str(path))) for path in found]
    return NpzSource(root, feed, files)


def _npy_for_one_input(path: Path, feed: ArrayFeed) -> str:
    if len(feed.inputs) != 1:
        raise CalibError(f"{path}: a .npy file holds one array, for a model with one input; this model takes "
                         f"{len(feed.inputs)} ({', '.join(feed.names)}): save .npz files keyed by input name "
                         f"(np.savez(file, {', '.join(f'{n}=...' for n in feed.names[:3])}))")
    return feed.names[0]


def _headers(path: Path, feed: ArrayFeed) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of the arrays in `path`, from numpy's format headers (no data read)."""
    try:
        if path.suffix.lower() == ".npy":
            name = _npy_for_one_input(path, feed)
            with open(path, "rb") as f:
                return {name: _header(f)}
        specs = {}
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as f:
                        specs[info.filename[:-4]] = _header(f)
        return specs
    except CalibError:
        raise
    except OSError as e:
        raise CalibError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:   # not numpy's format: a zip or header numpy cannot read
        raise CalibError(f"{path} is not a readable {path.suffix.lower()} file ({_first_line(e)})") from None


def _header(f) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:   # format 3.0 (utf-8 field names) has no public header reader: read the array
        f.seek(0)
        a = np.load(f, allow_pickle=False)
        shape, dtype = a.shape, a.dtype
    if dtype.hasobject:
        raise ValueError("it holds Python objects, not numbers")
    return tuple(shape), dtype


def _load(path: Path, feed: ArrayFeed) -> dict[str, np.ndarray]:
    """The arrays of `path` the model takes (numbers only: allow_pickle=False)."""
    try:
        if path.suffix.lower() == ".npy":
            return {_npy_for_one_input(path, feed): np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in feed.names if name in z.files}
    except CalibError:
        raise
    except OSError as e:
        raise CalibError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:
        raise CalibError(f"{path} is not a readable {path.suffix.lower()} file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def iter_arrays(dataset: Any, batch_size: int, device: str = "cpu", progress: str | None = None) -> Iterator[Batch]:
    """Batches of `dataset` (an `ArraySource` with its `ArrayFeed`) in sample order, each a `Batch`
    whose `images` maps input names to (n, ...) arrays in the model's dtypes: host arrays, or
    torch tensors on `device` ("cuda:N")."""
    from calib.progress import progress_bar

    source = dataset.source
    if not isinstance(source, ArraySource):
        raise InternalError(f"{source.id} is not a source of arrays")
    target = None
    if device != "cpu":
        from calib.data.cuda import to_device
        from calib.placement import require_torch_cuda

        _, target = require_torch_cuda(device)
    bar = progress_bar(total=len(dataset.samples), desc=progress, unit="sample", enabled=progress is not None)
    try:
        for i in range(0, len(dataset.samples), batch_size):
            chunk = dataset.samples[i:i + batch_size]
            arrays = source.read(chunk)
            if target is not None:
                arrays = {name: to_device(a, target) for name, a in arrays.items()}
            bar.update(len(chunk))
            yield Batch(arrays, np.full(len(chunk), UNLABELED, np.int64), [s.key for s in chunk])
    finally:
        bar.close()
