"""Dataset names on the command line -> the calibration set and a disjoint evaluation set (a plan)."""

from __future__ import annotations

from dataclasses import dataclass

from calib.data import Dataset, Preprocess, split, take
from calib.data.sources import ImageSource, image_folder, imagenet_val
from calib.errors import CalibError

DATASETS = ("demo", "imagenet-val", "images", "hf:<name-or-path>")


@dataclass
class DataPlan:
    calibration: Dataset
    evaluation: Dataset | None
    requested_samples: int
    demo: bool = False
    notes: tuple[str, ...] = ()


def open_source(name: str, data_dir: str | None) -> ImageSource:
    if name == "imagenet-val":
        return imagenet_val(data_dir)
    if name == "images":
        return image_folder(data_dir)
    if name.startswith("hf:") and len(name) > 3:
        from calib.data.hf import HFSource

        return HFSource(name[3:])
    if name == "demo":
        from calib.data.demo import DemoSource

        return DemoSource(variants=True)
    raise CalibError(f"unknown dataset '{name}' (choose from: {', '.join(DATASETS)})")


def plan_data(name: str, data_dir: str | None, preprocess: Preprocess, samples: int, seed: int = 0,
              eval_data_dir: str | None = None, eval_samples: int | None = None,
              evaluate: bool = True) -> DataPlan:
    """Calibration set and a disjoint evaluation set (the rest of the same folder, or
    --eval-data-dir)."""
    if samples < 1:
        raise CalibError("--samples must be at least 1")
    notes: list[str] = []
    if name == "demo":
        from calib.data.demo import DemoSource

        calibration = take(Dataset.of(DemoSource(variants=True), preprocess), samples, seed)
        evaluation = Dataset.of(DemoSource(variants=False), preprocess) if evaluate else None
        notes.append("demo: 5 photos shipped with scikit-image and matplotlib, calibrated on flipped/cropped "
                     "variants of them; far too few images for a real accuracy figure")
        return DataPlan(calibration, take(evaluation, eval_samples, seed) if evaluation else None,
                        samples, True, tuple(notes))
    full = Dataset.of(open_source(name, data_dir), preprocess)
    if len(full) == 0:
        raise CalibError(f"no images in {full.source.description}")
    if eval_data_dir is not None or not evaluate:
        calibration = take(full, samples, seed)
        evaluation = None
        if evaluate:
            evaluation = take(Dataset.of(open_source(name, eval_data_dir), preprocess), eval_samples, seed)
    else:
        calibration, evaluation = split(full, samples, seed, eval_samples)
    if len(calibration) < samples:
        notes.append(f"only {len(calibration)} images available for calibration ({samples} requested)")
    return DataPlan(calibration, evaluation, samples, False, tuple(notes))
