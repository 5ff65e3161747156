"""Image sources: an ordered list of labelled samples plus a way to open each one.

A source is picklable (decoding runs in worker processes) and knows nothing of preprocessing.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from calib.data.classes import wnid_to_index
from calib.errors import CalibError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
IMAGENET_DOC = "datasets/imagenet-val.md"


@dataclass(frozen=True)
class Sample:
    key: str    # a file path, or a row index for in-memory sources
    label: int  # ImageNet-1k index (or the dataset's own class index for hf:)


class ImageSource:
    """Base class: `samples` in a fixed order, `open(sample)` -> PIL image."""

    kind = "images"

    def __init__(self, samples: list[Sample], id: str, description: str = ""):
        self.samples = samples
        self.id = id
        self.description = description or id

    def open(self, sample: Sample) -> Image.Image:
        image = Image.open(sample.key)
        image.load()
        return image

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

    def __init__(self, samples: list[Sample], id: str, root: Path, description: str = ""):
        super().__init__(samples, id, description)
        self.root = str(root)

    def relative_key(self, sample: Sample) -> str:
        return os.path.relpath(sample.key, self.root)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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
    if not root.is_dir():
        raise CalibError(f"data folder not found: {root} (how to get ImageNet: {IMAGENET_DOC})")
    index = wnid_to_index()
    for candidate in (root, root / "val"):
        if not candidate.is_dir():
            continue
        class_dirs = sorted(p for p in candidate.iterdir() if p.is_dir() and p.name in index)
        if class_dirs:
            samples = [Sample(str(f), index[d.name]) for d in class_dirs for f in _images_in(d)]
            if not samples:
                break
            return FolderSource(samples, "imagenet-val", candidate,
                                f"ImageNet val, {len(class_dirs)} class folders in {candidate}")
    flat = [p for p in _images_in(root) if p.name.startswith("ILSVRC2012_val_")]
    if flat:
        return FolderSource(_flat_samples(root, flat, index), "imagenet-val", root,
                            f"ImageNet val, flat layout in {root}")
    raise CalibError(f"no ImageNet images in {root}: expected <dir>/<wnid>/*.JPEG or "
                     f"ILSVRC2012_val_*.JPEG with LOC_val_solution.csv (see {IMAGENET_DOC})")


def _flat_samples(root: Path, files: list[Path], index: dict[str, int]) -> list[Sample]:
    csv_path = next((p for p in (root / "LOC_val_solution.csv", root.parent / "LOC_val_solution.csv")
                     if p.is_file()), None)
    if csv_path is None:
        raise CalibError(f"flat ImageNet layout in {root} needs LOC_val_solution.csv beside the "
                         f"images or in its parent (see {IMAGENET_DOC})")
    labels: dict[str, int] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            wnid = row["PredictionString"].split()[0]
            labels[row["ImageId"]] = index[wnid]
    samples = [Sample(str(p), labels[p.stem]) for p in files if p.stem in labels]
    if not samples:
        raise CalibError(f"{csv_path} labels none of the images in {root}")
    return samples
