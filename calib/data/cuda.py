"""torch with a CUDA device, or a one-line error saying why not: what every GPU data path needs
first (the batch stream, nvJPEG decoding, the TensorRT runner's device buffers), and the one way
host arrays reach it (`to_device`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from calib.errors import CalibError, MissingDependency

if TYPE_CHECKING:  # pragma: no cover
    import torch


def require_torch_cuda(device: str):
    try:
        import torch
    except ImportError:
        raise MissingDependency("torch", "GPU batch streaming") from None
    dev = torch.device(device)
    if dev.type != "cuda":
        raise CalibError(f"GPU batch streaming needs a CUDA device, not '{device}' "
                         f"(for CPU batches use calib.data.loader.iter_batches)")
    if not torch.cuda.is_available():
        raise CalibError(f"GPU batch streaming needs an NVIDIA GPU with CUDA, and torch {torch.__version__} "
                         f"sees none (for CPU batches use calib.data.loader.iter_batches)")
    if dev.index is None:  # "cuda": the current device, named by its index (set_device needs one)
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise CalibError(f"there is no GPU {device}: torch sees {torch.cuda.device_count()} "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch, dev


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
