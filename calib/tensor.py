"""One function for numpy arrays and torch tensors: what the pass's consumers compute per batch.

The walk (`calib.passes`) hands consumers host arrays on the CPU and device tensors on a GPU; the
arithmetic is the same, so it is written once here and dispatched on the argument's type, as
NNCF's `nncf.tensor` dispatches one function to numpy or torch. Each branch does what the numpy
and torch versions did before they were merged (same dtypes, same reductions), so figures do not
move. torch is imported only when a torch tensor arrives.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Array = Any   # a numpy array, or a torch tensor on any device


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def on_device(x: Any) -> bool:
    """A torch tensor that is not in host memory."""
    return is_torch(x) and x.device.type != "cpu"


def to_numpy(x: Array) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def rows(x: Array, n: int) -> Array:
    """The first `n` rows as (n, -1) (a classifier's logits of the real images of a batch)."""
    if is_torch(x):
        return x[:n].reshape(n, -1)
    return np.asarray(x, np.float32)[:n].reshape(n, -1)


def owned(x: Array) -> Array:
    """A copy of a device tensor the runner will overwrite on its next call; host arrays the
    runner returned are the caller's already."""
    return x.clone() if is_torch(x) else x


def pad_rows(x: Array, n: int) -> Array:
    """`x` with zero rows appended up to `n` rows."""
    short = n - x.shape[0]
    if short <= 0:
        return x
    if is_torch(x):
        import torch

        return torch.cat([x, x.new_zeros((short, *x.shape[1:]))])
    return np.concatenate([x, np.zeros((short, *x.shape[1:]), x.dtype)])


def top5(x: Array) -> Array:
    """The five best classes per row, best first (all of them, best first, for 5 classes or
    fewer). numpy: a partition then a stable sort; torch: `topk` on the tensor's device."""
    if is_torch(x):
        import torch

        return torch.topk(x, min(5, x.shape[1]), dim=1).indices
    k = min(5, x.shape[1])
    if k < 5 or x.shape[1] == 5:
        return np.argsort(-x, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-x, 5, axis=1)[:, :5]
    order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def row_power(x: Array) -> Array:
    """Sum of squares per row, in float64."""
    if is_torch(x):
        ref = x.double()
        return (ref * ref).sum(1)
    ref = np.asarray(x).astype(np.float64)
    return np.sum(ref * ref, axis=1)


def row_error_power(reference: Array, test: Array) -> Array:
    """Sum of squared differences per row, in float64."""
    if is_torch(reference):
        err = reference.double() - test.double()
        return (err * err).sum(1)
    err = np.asarray(reference).astype(np.float64) - test
    return np.sum(err * err, axis=1)


def max_abs_diff(a: Array, b: Array) -> Array:
    """max |a - b| as a 0-d array (a device scalar on a GPU: no host wait)."""
    if is_torch(a):
        return (a - b).abs().max()
    return np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))) if np.size(a) else np.float32(0)


def channel_sums(x: Array) -> tuple[np.ndarray, int] | None:
    """(per-channel sums over every axis but 1, in float64 on the host; the values per channel)
    of a float tensor of rank >= 2, else None. (N, C, rest) keeps the reduction over contiguous
    memory; numpy's pairwise float32 summation is accurate to ~1e-7 here and 2.5x faster than
    float64."""
    if is_torch(x):
        import torch

        if x.ndim < 2 or not x.is_floating_point():
            return None
        view = x.reshape(x.shape[0], x.shape[1], -1)
        return view.sum(dim=2).to(torch.float64).sum(dim=0).cpu().numpy(), view.shape[0] * view.shape[2]
    a = np.asarray(x)
    if a.ndim < 2 or a.dtype.kind != "f":
        return None
    view = a.reshape(a.shape[0], a.shape[1], -1)
    return view.sum(axis=2).astype(np.float64).sum(axis=0), view.shape[0] * view.shape[2]


def concat(parts: Sequence[Array]) -> Array:
    if parts and is_torch(parts[0]):
        import torch

        return torch.cat(list(parts))
    return np.concatenate(parts)


def stack_max(parts: Sequence[Array]) -> float:
    """The largest of several 0-d arrays, as a float (0.0 for none)."""
    if not parts:
        return 0.0
    if is_torch(parts[0]):
        import torch

        return float(torch.stack(list(parts)).max())
    return float(np.max(parts))
