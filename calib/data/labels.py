"""Ground truth of the task metrics (`calib run --labels`): read against the evaluation images,
checked before any calibration, and put where the model saw each image, so that the metric
compares like with like.

- Detection: a COCO JSON file (`calib.metrics.coco.load_coco_labels`), images matched by file
  name (`calib.metrics.coco.match_images`). COCO's boxes are in the image's own pixels and the
  model's in its input's, so each image's `Preprocess.geometry` (the letterbox's scale and padding,
  or a crop's scale and offset) becomes the `calib.metrics.decode.Letterbox` that the detect metric
  already takes per batch to map the decoded boxes back (`geometry=`); nothing is recomputed here.
- Segmentation: a folder of masks, `<image stem>.png` (class ids as pixel values) or `.npy`
  (`calib.metrics.segment.MaskFolder`). A mask of its image's own size, as datasets ship them
  (VOC, Cityscapes, ADE20K), goes through the image's crop and resize (or letterbox) with nearest
  neighbour, the letterbox's padding void (255, not counted): `Preprocess.fit_mask`. That puts
  every label on the pixel the model saw, which needs the output at the input's size (most
  segmenters resize their logits to it; a mask of another size would have to be interpolated
  twice). A mask already of the output's spatial size is taken as it is (what a user who prepared
  masks for the model has). When an image has the output's size itself, its mask is read as the
  image's: the preset may crop it, and the mask must follow. Any other size is one line naming
  both sizes it could have had.

Images whose file cannot be read are left out of the checks: the evaluation skips them too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from calib.data.dataset import Dataset
from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError
from calib.metrics.base import first_output
from calib.metrics.coco import load_coco_labels
from calib.metrics.decode import Letterbox
from calib.metrics.registry import get_metric
from calib.metrics.segment import IGNORE_INDEX, MaskFolder


@dataclass
class TaskLabels:
    """What the task metric of a run takes from its labels: `params`, the metric's constructor
    arguments; `inputs`, per batch, the keyword arguments its `update` takes for those images (the
    same for both models). Without labels both are empty and the metric is against FP32."""
    task: str
    path: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    inputs: Callable[[Sequence[str]], dict[str, Any]] | None = None

    def metric(self):
        """A new accumulator of the task's metric with these labels."""
        return get_metric(self.task, **self.params)


def read_labels(task: str, path: str | os.PathLike | None, dataset: Dataset,
                outputs: Mapping[str, np.ndarray], **params: Any) -> TaskLabels:
    """`path` read as ground truth of `task` against the evaluation `dataset` and checked: every
    image has its entry, and the entries fit the model. `outputs`: the FP32 model's outputs for one
    image (their layout gives the class count and the output's size); `params`: the metric's other
    arguments (a detector's decoder). One-line CalibErrors."""
    if path is None:
        return TaskLabels(task, params=dict(params))
    if task not in ("detect", "segment"):
        raise CalibError(f"--task {task} takes no --labels: labels are for --task detect (a COCO JSON file) or "
                         "segment (a folder of masks)")
    path = Path(path).expanduser()
    sizes = ImageSizes(dataset)
    readable = sizes.readable()   # the images the evaluation will see: what the labels must cover
    if task == "detect":
        coco = load_coco_labels(path)
        probe = get_metric("detect", labels=coco, **params)
        probe.update("fp32", ["probe"], outputs)   # the decoder tells the model's class count
        probe.check_labels(readable)
        return TaskLabels(task, path.resolve(), {"labels": coco, **params}, BoxGeometry(sizes))
    folder = MaskFolder(path)
    x = first_output(outputs, None, "segment")
    masks = MaskLabels(folder, sizes, tuple(int(d) for d in x.shape[-2:]))
    masks.check(readable, int(x.shape[1]) if x.ndim == 4 else None)
    return TaskLabels(task, path.resolve(), {}, masks)


def image_size(source: ImageSource, sample: Sample) -> tuple[int, int] | None:
    """(width, height) of a sample's image (a file's header alone where the source reads files);
    None when it cannot be read (the evaluation skips that image too)."""
    try:
        if type(source).open is ImageSource.open:
            with Image.open(sample.key) as im:
                return im.size
        return source.open(sample).size
    except Exception:   # corrupt or unsupported: skipped by the evaluation, never fatal here
        return None


class ImageSizes:
    """The evaluation images' sizes by key, each read once, in the dataset's order."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._samples = {s.key: s for s in dataset.samples}
        self._sizes: dict[str, tuple[int, int] | None] = {}

    def __call__(self, key: str) -> tuple[int, int] | None:
        if key not in self._sizes:
            sample = self._samples.get(key)
            self._sizes[key] = image_size(self.dataset.source, sample) if sample is not None else None
        return self._sizes[key]

    def readable(self) -> list[str]:
        """The keys of the images whose size reads: those the evaluation will see."""
        return [s.key for s in self.dataset.samples if self(s.key) is not None]


class BoxGeometry:
    """Per batch, each image's `Letterbox` (from `Preprocess.geometry`): the detect metric's
    `geometry=`, mapping boxes from the input back to the image's pixels."""

    def __init__(self, sizes: ImageSizes):
        self.sizes, self.preprocess = sizes, sizes.dataset.preprocess

    def letterbox(self, key: str) -> Letterbox:
        size = self.sizes(key)
        if size is None:
            raise CalibError(f"cannot read the size of image '{key}' to map its boxes back to its pixels")
        g = self.preprocess.geometry(*size)
        return Letterbox(scale=g.scale_x, pad_x=g.offset_x, pad_y=g.offset_y, scale_y=g.scale_y)

    def __call__(self, keys: Sequence[str]) -> dict[str, Any]:
        return {"geometry": [self.letterbox(k) for k in keys]}


class MaskLabels:
    """Per batch, the images' masks where the model saw the images (module docstring): the
    segment metric's `labels=`."""

    def __init__(self, folder: MaskFolder, sizes: ImageSizes, output_hw: tuple[int, ...]):
        self.folder, self.sizes, self.output_hw = folder, sizes, tuple(output_hw)
        self.preprocess = sizes.dataset.preprocess
        self.input_hw = (self.preprocess.size, self.preprocess.size)

    def aligned(self, key: str) -> np.ndarray:
        """The mask of image `key`, int64, of the output's spatial size."""
        mask = np.asarray(self.folder.load(key))
        name = os.path.basename(str(key))
        if mask.ndim != 2:
            raise CalibError(f"labels do not match the images: the mask of '{name}' has shape {list(mask.shape)}; a "
                             "mask holds one class id per pixel, (H, W)")
        size = self.sizes(key)
        image_hw = (size[1], size[0]) if size is not None else None
        if mask.shape == image_hw:
            if self.output_hw != self.input_hw:
                raise CalibError(f"labels do not match the images: the mask of '{name}' has its image's size, which "
                                 f"calib puts where the model saw the image ({_hw(self.input_hw)}), but the output is "
                                 f"{_hw(self.output_hw)}: give masks of the output's size")
            return self.preprocess.fit_mask(mask)
        if mask.shape == self.output_hw:
            return mask.astype(np.int64)
        raise CalibError(f"labels do not match the images: the mask of '{name}' is {_hw(mask.shape)} (height x width), "
                         f"neither its image's {_hw(image_hw) if image_hw else 'size'} nor the output's "
                         f"{_hw(self.output_hw)}")

    def __call__(self, keys: Sequence[str]) -> dict[str, Any]:
        return {"labels": [self.aligned(k) for k in keys]}

    def check(self, keys: Sequence[str], classes: int | None) -> None:
        """Every image of `keys` (the readable evaluation images) has a mask of a size that fits,
        with class ids the model has (`classes`, when its output is scores) or void (255). Reads
        each mask once."""
        missing = [os.path.basename(str(k)) for k in keys if self.folder.path_of(k) is None]
        if missing:
            raise CalibError(f"labels do not match the images: {len(missing)} of {len(keys)} evaluation images have "
                             f"no mask <image stem>.png or .npy in {self.folder.folder}, e.g. '{missing[0]}'")
        for key in keys:
            mask = self.aligned(key)
            if classes is None:
                continue
            bad = mask[(mask != IGNORE_INDEX) & ((mask < 0) | (mask >= classes))]
            if bad.size:
                raise CalibError(f"labels do not match the model: the mask of '{os.path.basename(str(key))}' has class "
                                 f"{int(bad.flat[0])}, outside the model's 0..{classes - 1} ({IGNORE_INDEX}: void)")


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


__all__ = ["BoxGeometry", "ImageSizes", "MaskLabels", "TaskLabels", "image_size", "read_labels"]
