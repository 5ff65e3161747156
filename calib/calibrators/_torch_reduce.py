"""Torch tensors: CPU ones go through numpy without a copy, others are reduced on their device.

Imported only when a torch tensor reaches TensorStatistics.observe(), so `import calib.calibrators`
never imports torch. The device path mirrors the numpy path operation for operation (float32
math for 16/32-bit inputs, float64 for 64-bit, multiply by the power-of-two scale, truncate,
bincount), so a CUDA tensor lands in exactly the same bins as the same data in numpy.
"""

from __future__ import annotations

import math
import numpy as np
import torch

from calib.errors import CalibError

from . import _histogram as H

# Elements per device chunk: bounds the float32 + int64 temporaries to ~200 MB.
DEVICE_CHUNK = 1 << 24

_NUMPY_VIEWABLE = (torch.float16, torch.float32, torch.float64)


def as_host_numpy(x: "torch.Tensor") -> np.ndarray | None:
    """A numpy view of a CPU tensor (no copy for float16/32/64), or None for device tensors."""
    if x.device.type != "cpu":
        return None
    t = x.detach()
    if t.is_complex():
        raise CalibError(f"cannot calibrate a tensor of dtype {t.dtype}")
    if t.dtype not in _NUMPY_VIEWABLE:
        # bfloat16 has no numpy dtype; ints are widened the same way the numpy path would.
        t = t.to(torch.float32 if t.is_floating_point() else torch.float64)
    return t.resolve_conj().resolve_neg().numpy()


def _work_dtype(t: "torch.Tensor") -> "torch.dtype":
    if t.is_complex():
        raise CalibError(f"cannot calibrate a tensor of dtype {t.dtype}")
    if t.dtype == torch.float64 or not t.is_floating_point():
        return torch.float64
    return torch.float32


def reduce_tensor(stats: H.Sink, entry: H.Entry, x: "torch.Tensor") -> None:
    """Add tensor `x` to `entry`, computing on x.device; works for CPU tensors too (tests use it)."""
    with torch.no_grad():
        flat = x.detach().reshape(-1)
        work = _work_dtype(flat)
        for start in range(0, flat.numel(), DEVICE_CHUNK):
            chunk = flat[start : start + DEVICE_CHUNK]
            if chunk.dtype != work:
                chunk = chunk.to(work)
            lo, hi = (float(v) for v in torch.stack(torch.aminmax(chunk)).cpu())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                finite = torch.isfinite(chunk)
                kept = int(finite.sum().item())
                entry.nonfinite += chunk.numel() - kept
                if kept == 0:
                    continue
                chunk = chunk[finite]
                lo, hi = (float(v) for v in torch.stack(torch.aminmax(chunk)).cpu())
            stats._update_range(entry, lo, hi, chunk.numel())
            if entry.counts is None:
                continue
            if entry.exp is None:
                entry.counts[0] += chunk.numel()
                continue
            factors = H.scale_factors(stats.bins, entry.exp)
            if chunk.dtype == torch.float32 and H.needs_float64(factors):
                chunk = chunk.to(torch.float64)
            scaled = chunk.mul(factors[0])
            for f in factors[1:]:
                scaled.mul_(f)
            index = scaled.abs_().to(torch.int64)
            binned = torch.bincount(index, minlength=stats.bins).cpu().numpy()
            if binned.size > stats.bins:  # guard, as in the numpy path
                binned[stats.bins - 1] += binned[stats.bins :].sum()
                binned = binned[: stats.bins]
            entry.counts += binned
