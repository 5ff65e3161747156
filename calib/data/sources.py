"""Image sources: an ordered list of labelled samples plus a way to open each one.

A source is picklable (decoding runs in worker processes) and knows nothing of preprocessing.
It also says where each sample comes from (`origin`, `content_path`, `derived`), so overlap
between two datasets is computed from the files themselves (calib.data.overlap), and which
images it found but could not label (`unlabeled`), so none is dropped without a word.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from calib.data.classes import wnid_to_index
from calib.errors import CalibError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
IMAGENET_DOC = "datasets/imagenet-val.md"
FLAT_CSV = "LOC_val_solution.csv"


@dataclass(frozen=True)
class Sample:
    key: str    # a file path, or a row index for in-memory sources
    label: int  # ImageNet-1k index (or the dataset's own class index for hf:)


class ImageSource:
    """Base class: `samples` in a fixed order, `open(sample)` -> PIL image.

    `kind` "images" means sample keys are file paths (the default `open`); any other kind
    (hf) means keys are ids within the source, and `origin` names them by the source's id.
    """

    kind = "images"

    def __init__(self, samples: list[Sample], id: str, description: str = "",
                 unlabeled: list[str] | None = None):
        self.samples = samples
        self.id = id
        self.description = description or id
        # Images found but left out for lack of a label (paths): reports show the count.
        self.unlabeled: list[str] = list(unlabeled or [])

    def open(self, sample: Sample) -> Image.Image:
        image = Image.open(sample.key)
        image.load()
        return image

    def origin(self, sample: Sample) -> str:
        """What the sample is an image of: the resolved file path, or for in-memory sources
        '<source id>#<key>'. Two samples with one origin are the same image (or one is derived
        from the other: `derived`)."""
        if self.kind == "images":
            return os.path.realpath(sample.key)
        return f"{self.id}#{sample.key}"

    def content_path(self, sample: Sample) -> str | None:
        """The file whose bytes are this sample, or None (in-memory, or made from a file)."""
        return sample.key if self.kind == "images" else None

    def derived(self, sample: Sample) -> bool:
        """True when the sample is a transformed copy of its origin (the demo's variants)."""
        return False

    def fingerprint(self, samples: list[Sample] | None = None) -> str:
        """sha256 of the ordered sample list (names relative to the source, and labels)."""
        h = hashlib.sha256()
        for s in samples if samples is not None else self.samples:
            h.update(f"{self.relative_key(s)}\t{s.label}\n".encode())
        return h.hexdigest()

    def relative_key(self, sample: Sample) -> str:
        return sample.key

    def __len__(self) -> int:
        return len(self.samples)


class FolderSource(ImageSource):
    """Files on disk; keys are absolute paths, fingerprinted relative to `root`."""

    def __init__(self, samples: list[Sample], id: str, root: Path, description: str = "",
                 unlabeled: list[str] | None = None):
        super().__init__(samples, id, description, unlabeled)
        self.root = str(root)

    def relative_key(self, sample: Sample) -> str:
        return os.path.relpath(sample.key, self.root)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in _listdir(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise CalibError(f"cannot read folder {folder}: {e.strerror or e}") from None


def imagenet_val(data_dir: str | os.PathLike | None) -> FolderSource:
    """ImageNet validation images, class-sorted (`<dir>/<wnid>/*.JPEG`, also `<dir>/val/<wnid>/`)
    or flat (`ILSVRC2012_val_*.JPEG` with Kaggle's `LOC_val_solution.csv`)."""
    if data_dir is None:
        data_dir = os.environ.get("CALIB_IMAGENET_VAL")
        if not data_dir:
            raise CalibError(
                f"no ImageNet validation folder: pass --data-dir DIR or set CALIB_IMAGENET_VAL "
                f"(how to get it: {IMAGENET_DOC})")
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise CalibError(f"{root} is a file, not a data folder (how to get ImageNet: {IMAGENET_DOC})")
    if not root.is_dir():
        raise CalibError(f"data folder not found: {root} (how to get ImageNet: {IMAGENET_DOC})")
    index = wnid_to_index()
    for candidate in (root, root / "val"):
        if not candidate.is_dir():
            continue
        subdirs = sorted(p for p in _listdir(candidate) if p.is_dir())
        class_dirs = [p for p in subdirs if p.name in index]
        if class_dirs:
            samples = [Sample(str(f), index[d.name]) for d in class_dirs for f in _images_in(d)]
            if not samples:
                break
            # Images beside the class folders, or in folders that are not ImageNet wnids.
            unlabeled = [str(f) for f in _images_in(candidate)] + \
                [str(f) for d in subdirs if d.name not in index for f in _images_in(d)]
            _warn_unlabeled(unlabeled, f"are not in a folder named by an ImageNet wnid in {candidate}")
            return FolderSource(samples, "imagenet-val", candidate,
                                f"ImageNet val, {len(class_dirs)} class folders in {candidate}", unlabeled)
    images = _images_in(root)
    flat = [p for p in images if p.name.startswith("ILSVRC2012_val_")]
    if flat:
        samples, unlabeled, csv_path = _flat_samples(root, flat, index)
        unlabeled += [str(p) for p in images if not p.name.startswith("ILSVRC2012_val_")]
        _warn_unlabeled(unlabeled, f"have no row in {csv_path}")
        return FolderSource(samples, "imagenet-val", root, f"ImageNet val, flat layout in {root}", unlabeled)
    raise CalibError(f"no ImageNet images in {root}: expected <dir>/<wnid>/*.JPEG or "
                     f"ILSVRC2012_val_*.JPEG with {FLAT_CSV} (see {IMAGENET_DOC})")


UNLABELED = -1   # the label of an image no label was given for (`--dataset images`)


def image_folder(data_dir: str | os.PathLike | None) -> FolderSource:
    """Any folder of images, searched recursively, no labels: what a detector, a segmenter or any
    model judged against its own FP32 outputs is calibrated and evaluated on (`--dataset images`).
    Hidden files and folders are skipped; the order is the sorted relative path, so the seeded
    sample does not depend on the file system."""
    if data_dir is None:
        raise CalibError("--dataset images needs --data-dir DIR (a folder of images, searched recursively)")
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise CalibError(f"{root} is a file, not a folder of images")
    if not root.is_dir():
        raise CalibError(f"data folder not found: {root}")
    files = files_under(root, IMAGE_SUFFIXES)
    if not files:
        raise CalibError(f"no images in {root} (searched recursively for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return FolderSource([Sample(str(f), UNLABELED) for f in files], "images", root,
                        f"{len(files)} images under {root}")


def files_under(root: Path, suffixes: set[str]) -> list[Path]:
    """Every file under `root` with one of `suffixes`, searched recursively, hidden files and
    folders skipped, in sorted relative order (so a seeded sample does not depend on the file
    system); an unreadable folder is a one-line CalibError."""
    files = []
    for folder, dirs, names in os.walk(root, onerror=_walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in suffixes]
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def _walk_error(error: OSError) -> None:
    raise CalibError(f"cannot read folder {error.filename}: {error.strerror or error}")


def _warn_unlabeled(unlabeled: list[str], why: str) -> None:
    if unlabeled:
        names = ", ".join(os.path.basename(u) for u in unlabeled[:3]) + (" …" if len(unlabeled) > 3 else "")
        warnings.warn(f"{len(unlabeled)} image(s) {why} and have no label: left out ({names})", stacklevel=3)


def read_flat_labels(csv_path: Path, index: dict[str, int]) -> dict[str, int]:
    """ImageId -> label from Kaggle's LOC_val_solution.csv (the first wnid of each row's
    PredictionString). A malformed row or an unknown wnid is a CalibError naming its line."""
    labels: dict[str, int] = {}
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise CalibError(f"cannot read {csv_path}: {e.strerror or e}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or "ImageId" not in header or "PredictionString" not in header:
                raise CalibError(f"{csv_path}, line 1: expected the header 'ImageId,PredictionString' "
                                 f"(Kaggle's {FLAT_CSV}), not {','.join(header or [])[:80]!r}")
            id_col, pred_col = header.index("ImageId"), header.index("PredictionString")
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise CalibError(f"{csv_path}, line {line}: malformed row ({len(row)} fields, "
                                     f"expected {len(header)}: ImageId,PredictionString)")
                image_id, prediction = row[id_col].strip(), row[pred_col].split()
                if not image_id or not prediction:
                    raise CalibError(f"{csv_path}, line {line}: malformed row (empty ImageId or PredictionString)")
                wnid = prediction[0]
                if wnid not in index:
                    raise CalibError(f"{csv_path}, line {line}: unknown wnid '{wnid[:40]}' (not an ImageNet-1k class)")
                if labels.get(image_id, index[wnid]) != index[wnid]:
                    raise CalibError(f"{csv_path}, line {line}: {image_id} is labelled again, with another class")
                labels[image_id] = index[wnid]
        except csv.Error as e:
            raise CalibError(f"{csv_path}, line {reader.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError:
            raise CalibError(f"{csv_path}: not a UTF-8 CSV file") from None
    return labels


def _flat_samples(root: Path, files: list[Path], index: dict[str, int]) -> tuple[list[Sample], list[str], Path]:
    csv_path = next((p for p in (root / FLAT_CSV, root.parent / FLAT_CSV) if p.is_file()), None)
    if csv_path is None:
        raise CalibError(f"flat ImageNet layout in {root} needs {FLAT_CSV} beside the "
                         f"images or in its parent (see {IMAGENET_DOC})")
    labels = read_flat_labels(csv_path, index)
    samples = [Sample(str(p), labels[p.stem]) for p in files if p.stem in labels]
    unlabeled = [str(p) for p in files if p.stem not in labels]
    if not samples:
        raise CalibError(f"{csv_path} labels none of the {len(files)} images in {root}")
    return samples, unlabeled, csv_path
