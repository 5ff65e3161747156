"""Decoded uint8 images of different sizes packed one after another in one buffer.

Why: the Triton resize kernel (`calib.data.resample_kernel`) takes a batch of images of different
sizes in one launch per pass, so it reads them from one buffer, each at its own base offset, rather
than as hundreds of tensors. The images are channel-planar (3, H, W), as nvJPEG and Pillow
(`calib.data.transforms.pil_pixels`) hand them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class PackedImages:
    """`flat` (uint8, 1-D, one device) holds image i as (3, H, W) planes at `bases[i]`;
    `sizes[i]` is (H, W)."""
    flat: "torch.Tensor"
    sizes: list[tuple[int, int]]
    bases: list[int]

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def device(self):
        return self.flat.device

    def strides(self, i: int) -> tuple[int, int, int]:
        """(channel, row, column) strides of image i in `flat`, in elements."""
        h, w = self.sizes[i]
        return h * w, w, 1

    @classmethod
    def from_images(cls, images: Sequence["torch.Tensor"]) -> "PackedImages":
        """Planar (3, H, W) uint8 tensors (one device) concatenated into one buffer."""
        import torch

        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        bases, base = [], 0
        for h, w in sizes:
            bases.append(base)
            base += 3 * h * w
        flat = torch.cat([im.reshape(-1) for im in images])
        return cls(flat, sizes, bases)
