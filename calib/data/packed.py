"""Decoded uint8 images of different sizes packed one after another in one buffer.

Why: a batch of decoded photos crosses to the GPU and into the resize kernel as one buffer (one
host-to-device copy, one kernel launch per pass) rather than as hundreds of tensors. Each image
keeps its own layout: nvJPEG and Pillow hand out channel-planar (3, H, W) images, libjpeg-turbo
writes interleaved (H, W, 3) rows; the resize kernel reads either through per-image strides
(`calib.data.resample_kernel`), so nothing is transposed on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class PackedImages:
    """`flat` (uint8, 1-D, one device) holds image i at `bases[i]`: (3, H, W) planes, or (H, W, 3)
    rows where `interleaved[i]`; `sizes[i]` is (H, W)."""
    flat: "torch.Tensor"
    sizes: list[tuple[int, int]]
    bases: list[int]
    interleaved: list[bool]

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def device(self):
        return self.flat.device

    def strides(self, i: int) -> tuple[int, int, int]:
        """(channel, row, column) strides of image i in `flat`, in elements."""
        h, w = self.sizes[i]
        return (1, 3 * w, 3) if self.interleaved[i] else (h * w, w, 1)

    def subset(self, index: Sequence[int]) -> "PackedImages":
        """The images at `index`, in that order (the same buffer)."""
        return PackedImages(self.flat, [self.sizes[i] for i in index], [self.bases[i] for i in index],
                            [self.interleaved[i] for i in index])

    def views(self) -> list["torch.Tensor"]:
        """Each image as a (3, H, W) view of `flat` (a strided view for interleaved images)."""
        out = []
        for (h, w), base, inter in zip(self.sizes, self.bases, self.interleaved):
            chunk = self.flat[base:base + 3 * h * w]
            out.append(chunk.view(h, w, 3).permute(2, 0, 1) if inter else chunk.view(3, h, w))
        return out

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
        return cls(flat, sizes, bases, [False] * len(images))
