"""The one way host arrays reach a GPU (`to_device`); the device itself, or a one-line error saying
why not, is `calib.placement.require_torch_cuda`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:  # pragma: no cover
    import torch


def to_device(a: np.ndarray, device) -> "torch.Tensor":
    """A host array on `device`: on a GPU through pinned memory filled by numpy (torch's own CPU
    copy would fan out to every intra-op thread, which stalls while the models keep the other
    cores' threads busy), then one non-blocking copy."""
    import torch

    if device.type != "cuda":
        return torch.from_numpy(a)
    pinned = torch.empty(a.shape, dtype=torch.from_numpy(a[:0]).dtype, pin_memory=True)
    np.copyto(pinned.numpy(), a)
    return pinned.to(device, non_blocking=True)
