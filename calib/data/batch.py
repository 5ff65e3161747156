"""The one batch type: what every image stream hands out, on the CPU or on a GPU.

Why one: the CPU path's batches (numpy, from the decode workers of `calib.data.loader`) and the
GPU path's (torch tensors on the device, `calib.data.gpu_stream`) carry the same things, the
images, their labels and keys and the keys skipped on the way, and every consumer (the
calibration pass, the evaluation) reads only those; so code written against a batch runs on
either. What only a GPU stream has is optional: the fixed-size buffer TensorRT's calibrators read
(`buffer`, `pointer`) and the CUDA event that marks the batch ready (`ready`). A batch of named
arrays (`calib.data.arrays`: a model with several inputs, or inputs that are not images) holds a
mapping input name -> array in `images`, which runners take as it is (`Runner.infer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class Batch:
    images: Any                 # (N, C, H, W) float32: a numpy array on the host, a torch tensor on a GPU;
    #                             or a dict input name -> (N, ...) array (calib.data.arrays)
    labels: np.ndarray          # (N,) int64, on the host
    keys: list[str]             # sample keys, in order
    skipped: list[str] = field(default_factory=list)  # keys that could not be decoded
    # GPU streams only:
    buffer: "torch.Tensor | None" = None   # GpuBatchStream's whole fixed-size slot (batch_size rows,
    #                                        zero past N), valid until the next batch is requested
    ready: object = field(default=None, repr=False)   # CUDA event: the images are on the device

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def pointer(self) -> int:
        """Device address of the fixed-size buffer (what TensorRT's get_batch returns)."""
        return int(self.buffer.data_ptr())
