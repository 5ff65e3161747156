"""Data: image sources, preprocessing presets, datasets and batch streaming."""

from calib.data.batch import Batch
from calib.data.dataset import Dataset, split, take
from calib.data.loader import SkipLog, iter_batches
from calib.data.sources import ImageSource, Sample, imagenet_val
from calib.data.transforms import Preprocess, get_preset

__all__ = ["Batch", "Dataset", "ImageSource", "Preprocess", "Sample", "SkipLog", "get_preset",
           "imagenet_val", "iter_batches", "split", "take"]
