"""Dataset names on the command line -> the calibration set and a disjoint evaluation set (a plan).

Images (demo, imagenet-val, images, hf:) go through a preprocessing preset; named arrays (npz, and
the dataset readers of `calib.data.readers`) through the model's `ArrayFeed` (calib.data.arrays):
the preset's place in the plan, so both are sampled and split the same way. The dataset options are
checked here too, before any model (`check_dataset_options`), and --samples left out is decided
here, from the folder (`default_samples`)."""

from __future__ import annotations

from dataclasses import dataclass

from calib.data import Dataset, Preprocess, split, take
from calib.data.arrays import ArrayFeed, npz_folder
from calib.data.sources import ImageSource, image_folder, imagenet_val
from calib.errors import CalibError, InternalError

DATASETS = ("demo", "imagenet-val", "images", "npz", "hf:<name-or-path>")
IMAGE_DATASETS = ("demo", "imagenet-val", "images")   # and hf:<name>
FOLDER_DATASETS = ("imagenet-val", "images", "npz")   # the datasets that read --data-dir and --eval-data-dir
MAX_DEFAULT_SAMPLES = 500   # a few hundred images calibrate as well as thousands (README)


def is_arrays(name: str | None) -> bool:
    """Whether dataset `name` feeds named arrays (npz, a registered dataset reader) rather than
    images: the model is then taken as it is, every input fed from the data (calib.models.intake)."""
    if not name or name in IMAGE_DATASETS or name.startswith("hf:"):
        return False
    if name == "npz":
        return True
    from calib.data.readers import available_readers

    return name in available_readers()


def dataset_names() -> list[str]:
    """Every name `--dataset` takes: the built-ins, then the installed dataset readers."""
    from calib.data.readers import available_readers

    return [*DATASETS, *(r for r in available_readers() if r not in DATASETS)]


def check_dataset_options(name: str, data_dir: str | None = None, eval_data_dir: str | None = None) -> None:
    """`--dataset name` known, and a folder option it does not read refused: `--dataset demo
    --data-dir X` ran the embedded photos and ignored X, and an hf: dataset evaluated on itself
    whatever --eval-data-dir said. A dataset reader (calib.data.readers) is handed both folders."""
    if name in FOLDER_DATASETS:
        return
    if name != "demo" and not (name.startswith("hf:") and len(name) > 3):
        if is_arrays(name):
            return
        raise CalibError(f"unknown dataset '{name}' (choose from: {', '.join(dataset_names())})")
    given = [flag for flag, value in (("--data-dir", data_dir), ("--eval-data-dir", eval_data_dir)) if value]
    if given:
        reads = "its embedded photos" if name == "demo" else "the images its name gives"
        raise CalibError(f"--dataset {name} reads {reads}, not {' or '.join(given)}: folders are for "
                         f"{', '.join(FOLDER_DATASETS)} (the dataset --data-dir implies when --dataset is left out)")


def default_samples(available: int, shared: bool) -> int:
    """The calibration samples when --samples is left out: half of the `available` ones when the
    evaluation takes the rest of them (`shared`), all of them otherwise (--eval-data-dir,
    calibrate), at most 500. A fixed 500 left nothing to evaluate on a 500-image folder, so compare
    and sensitivity failed there by default."""
    return max(1, min(MAX_DEFAULT_SAMPLES, available // 2 if shared else available))


@dataclass
class DataPlan:
    calibration: Dataset
    evaluation: Dataset | None
    requested_samples: int
    demo: bool = False
    notes: tuple[str, ...] = ()


def open_source(name: str, data_dir: str | None, preprocess: "Preprocess | ArrayFeed | None" = None) -> ImageSource:
    """The source `--dataset name` reads (from `data_dir`); a dataset of named arrays checks its
    files or feeds against `preprocess`, the model's `ArrayFeed`."""
    if is_arrays(name):
        if not isinstance(preprocess, ArrayFeed):
            raise InternalError(f"--dataset {name} feeds named arrays: open it with the model's ArrayFeed")
        if name == "npz":
            return npz_folder(data_dir, preprocess)
        from calib.data.readers import ReaderSource

        return ReaderSource(name, data_dir, preprocess)
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
    raise CalibError(f"unknown dataset '{name}' (choose from: {', '.join(dataset_names())})")


def plan_data(name: str, data_dir: str | None, preprocess: "Preprocess | ArrayFeed", samples: int | None = None,
              seed: int = 0, eval_data_dir: str | None = None, eval_samples: int | None = None,
              evaluate: bool = True) -> DataPlan:
    """Calibration set and a disjoint evaluation set (the rest of the same folder, or
    --eval-data-dir). `samples`: the calibration samples, None for `default_samples` (the demo:
    all its 500 variants, its evaluation photos being a source of their own). The `--data-dir`
    source is opened once: a reader is read once."""
    if samples is not None and samples < 1:
        raise CalibError("--samples must be at least 1")
    notes: list[str] = []
    if name == "demo":
        from calib.data.demo import DemoSource

        samples = MAX_DEFAULT_SAMPLES if samples is None else samples
        calibration = take(Dataset.of(DemoSource(variants=True), preprocess), samples, seed)
        evaluation = Dataset.of(DemoSource(variants=False), preprocess) if evaluate else None
        notes.append("demo: 5 photos shipped with scikit-image and matplotlib, calibrated on flipped/cropped "
                     "variants of them; far too few images for a real accuracy figure")
        return DataPlan(calibration, take(evaluation, eval_samples, seed) if evaluation else None,
                        samples, True, tuple(notes))
    full = Dataset.of(open_source(name, data_dir, preprocess), preprocess)
    shared = evaluate and eval_data_dir is None   # the evaluation takes the rest of the folder
    samples = default_samples(len(full), shared) if samples is None else samples
    noun = getattr(full.source, "noun", "images")
    if len(full) == 0:
        raise CalibError(f"no {noun} in {full.source.description}")
    if not shared:
        calibration = take(full, samples, seed)
        evaluation = None
        if evaluate:
            evaluation = take(Dataset.of(open_source(name, eval_data_dir, preprocess), preprocess), eval_samples, seed)
    else:
        calibration, evaluation = split(full, samples, seed, eval_samples)
    if len(calibration) < samples:
        notes.append(f"only {len(calibration)} {noun} available for calibration ({samples} requested)")
    return DataPlan(calibration, evaluation, samples, False, tuple(notes))
