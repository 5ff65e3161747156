"""Hugging Face `datasets` as an optional source: `--dataset hf:<name-or-path>`.

Offline, <name-or-path> is a folder written by `Dataset.save_to_disk`, or an image folder
(`<dir>/<class>/*.jpg`, loaded with the `imagefolder` builder); with network, a hub name.
Labels: the first column of type ClassLabel (usually `label`), in that feature's class order.
Those are ImageNet indices only when the dataset uses ImageNet-1k's order (as `imagenet-1k`
does); the report states the column and its class names.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError, MissingDependency


class HFSource(ImageSource):
    kind = "hf"

    def __init__(self, spec: str, split: str = "validation"):
        try:
            import datasets
        except ImportError:
            raise MissingDependency("datasets", "--dataset hf:...", "pip install 'calib[hf]'") from None
        path = Path(spec).expanduser()
        try:
            if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
                ds = datasets.load_from_disk(str(path))
            elif path.is_dir():
                ds = datasets.load_dataset("imagefolder", data_dir=str(path))
            else:
                ds = datasets.load_dataset(spec)
        except Exception as e:  # the library raises many types; one line is enough for the user
            raise CalibError(f"cannot load Hugging Face dataset '{spec}': {str(e).splitlines()[0]}") from None
        chosen = ""
        if isinstance(ds, datasets.DatasetDict):
            chosen = split if split in ds else next(iter(ds))
            ds = ds[chosen]
        self.image_column = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        self.label_column = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
        if self.image_column is None or self.label_column is None:
            raise CalibError(f"Hugging Face dataset '{spec}' needs an Image column and a ClassLabel column "
                             f"(has: {', '.join(ds.features)})")
        self.class_names = list(ds.features[self.label_column].names)
        self._dataset = ds
        labels = ds[self.label_column]
        samples = [Sample(str(i), int(label)) for i, label in enumerate(labels)]
        # The split is part of the id: two splits of one dataset are different images with the same
        # row numbers (the cache key and the overlap check both go by the id).
        super().__init__(samples, f"hf:{spec}" + (f"[{chosen}]" if chosen else ""),
                         f"Hugging Face '{spec}'" + (f" split '{chosen}'" if chosen else "")
                         + f": labels from column '{self.label_column}' "
                         f"({len(self.class_names)} classes in that feature's order)")

    def open(self, sample: Sample) -> Image.Image:
        image = self._dataset[int(sample.key)][self.image_column]
        image.load()
        return image
