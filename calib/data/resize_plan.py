"""Pillow's resize arithmetic for the GPU resamplers, in numpy alone: crop windows, filter
weights, pass order and the per-image tables the resize kernels read.

Why a module of its own: this is the part of the GPU path that must equal Pillow integer for
integer, and none of it needs a GPU. It follows Pillow's `src/libImaging/Resample.c`
(`precompute_coeffs`, bicubic a = -0.5 and the triangle filter, support scaled by the downscale
factor; `normalize_coeffs_8bpc`, 22-bit fixed-point weights; `ImagingResampleInner`'s choice of
which pass runs first) and the crop of the CPU path (`calib.data.transforms.Preprocess`). The
torch resampler (`calib.data.gpu_decode`) and the Triton kernel (`calib.data.resample_kernel`)
both read what it computes, so neither imports the other for it, and it is tested without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from calib.data.transforms import Preprocess
from calib.errors import CalibError

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (Resample.c)
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


# --------------------------------------------------------------------------- crop arithmetic
@dataclass(frozen=True)
class AxisPlan:
    """One axis of Pillow's `resize(box=...)` followed by an integer crop.

    The source interval [in0, in1) of an axis of `in_size` pixels is resampled to `out_size`
    pixels, of which `count` starting at `keep` are kept."""
    in_size: int
    in0: float
    in1: float
    out_size: int
    keep: int
    count: int


def crop_plan(preprocess: Preprocess, width: int, height: int) -> tuple[AxisPlan, AxisPlan]:
    """(x, y) plans with exactly the arithmetic of `Preprocess.__call__`."""
    size = preprocess.size
    if preprocess.crop == "padded":
        side = int(size / (size + preprocess.crop_padding) * min(width, height))
        left, top = (width - side + 1) // 2, (height - side + 1) // 2
        return (AxisPlan(width, left, left + side, size, 0, size),
                AxisPlan(height, top, top + side, size, 0, size))
    scale = preprocess.resize_to / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return (AxisPlan(width, 0, width, nw, left, size), AxisPlan(height, 0, height, nh, top, size))


def _filter(x: np.ndarray, interpolation: str) -> np.ndarray:
    """Pillow's bicubic (a = -0.5) and bilinear (triangle) filters, operation for operation."""
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=4096)
def _coefficients(in_size: int, in0: float, in1: float, out_size: int, interpolation: str):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: (first source index per output,
    int64 fixed-point weights (out_size, ksize)). Cached: image sizes repeat across a dataset."""
    if interpolation not in _SUPPORT:
        raise CalibError(f"GPU resampling supports {', '.join(_SUPPORT)}, not '{interpolation}'")
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[interpolation] * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = in0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < xmax[:, None]
    w = _filter(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * ss, interpolation)
    w = np.where(valid, w, 0.0)
    ww = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):  # left to right, as Pillow sums (float addition is not associative)
        ww += w[:, j]
    k = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    one = float(1 << PRECISION_BITS)
    kk = np.where(k < 0, np.trunc(-0.5 + k * one), np.trunc(0.5 + k * one)).astype(np.int64)
    return xmin, kk


def axis_weights(plan: AxisPlan, interpolation: str) -> tuple[int, np.ndarray]:
    """(first source pixel, int64 weights (count, span)): the kept outputs of one axis as a
    dense matrix over the source pixels [first, first + span) they read."""
    xmin, kk = _coefficients(plan.in_size, float(plan.in0), float(plan.in1), plan.out_size, interpolation)
    xmin, kk = xmin[plan.keep:plan.keep + plan.count], kk[plan.keep:plan.keep + plan.count]
    nonzero = kk != 0
    last = np.where(nonzero, xmin[:, None] + np.arange(kk.shape[1])[None, :] + 1, 0).max()
    first = int(xmin.min())
    span = max(int(last) - first, 1)
    dense = np.zeros((plan.count, span), dtype=np.int64)
    rows, taps = np.nonzero(nonzero)
    dense[rows, xmin[rows] - first + taps] = kk[rows, taps]
    return first, dense


def _compact(plan: AxisPlan, interpolation: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(first source pixel, span, per-output offset from `first`, weights (count, ksize)) of
    the kept outputs: the dense matrix of `axis_weights`, without its zeros."""
    xmin, kk = _coefficients(plan.in_size, float(plan.in0), float(plan.in1), plan.out_size, interpolation)
    xmin, kk = xmin[plan.keep:plan.keep + plan.count], kk[plan.keep:plan.keep + plan.count]
    first = int(xmin.min())
    taps = np.nonzero(kk.any(axis=0))[0]
    span = max(int((xmin[:, None] + np.arange(kk.shape[1])[None, :])[kk != 0].max(initial=first)) + 1 - first, 1)
    return first, span, xmin - first, kk[:, :int(taps.max()) + 1 if taps.size else 1]


# --------------------------------------------------------------------------- per-image plans
@lru_cache(maxsize=1)
def pillow_orders_passes() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks more
    than twice as much as the width (newer Pillow's `ImagingResampleInner`; older ones always
    go horizontal first). Probed once on a small image where the two orders differ."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (340, 250), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(pixels, "L").resize((224, 224), Image.Resampling.BICUBIC,
                                                        box=(16, 61, 234, 279))).astype(np.int64)
    x0, wx = axis_weights(AxisPlan(250, 16, 234, 224, 0, 224), "bicubic")
    y0, wy = axis_weights(AxisPlan(340, 61, 279, 224, 0, 224), "bicubic")
    crop = pixels[y0:y0 + wy.shape[1], x0:x0 + wx.shape[1]].astype(np.int64)

    def rnd(v):
        return np.clip((v + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)

    vertical_first = rnd(rnd(wy @ crop) @ wx.T)
    return bool(np.array_equal(vertical_first, ref))


def vertical_first(px: AxisPlan, py: AxisPlan) -> bool:
    """Pillow's pass order for one image (`horizontal_first` in Resample.c, when it has one)."""
    if not pillow_orders_passes():
        return False
    shrink_y, shrink_x = py.in_size - py.out_size, px.in_size - px.out_size
    return shrink_y > 0 and shrink_y > shrink_x * 2


@dataclass(frozen=True)
class ImagePlan:
    """Everything the Pillow-exact resize needs for one image size: the crop window of the
    source ([y0, y0 + sy) x [x0, x0 + sx)), each axis' compact weights (per-output offsets into
    the window and fixed-point taps) and Pillow's pass order. Depends only on the image size
    and the preset, so it is computed once per size (`image_plan`)."""
    x0: int
    sx: int
    offx: np.ndarray
    kkx: np.ndarray
    y0: int
    sy: int
    offy: np.ndarray
    kky: np.ndarray
    v_first: bool


@lru_cache(maxsize=8192)
def image_plan(preprocess: Preprocess, width: int, height: int) -> ImagePlan:
    """The cached `ImagePlan` of a `width` x `height` image (image sizes repeat across a dataset:
    the per-image Python work of a batch is then a dictionary lookup)."""
    px, py = crop_plan(preprocess, width, height)
    x0, sx, offx, kkx = _compact(px, preprocess.interpolation)
    y0, sy, offy, kky = _compact(py, preprocess.interpolation)
    return ImagePlan(x0, sx, offx, kkx, y0, sy, offy, kky, vertical_first(px, py))


def plan_tables(plans: Sequence[ImagePlan], size: int) -> tuple[np.ndarray, int, int]:
    """(int32 (n, size, 2 + kx + ky) table, kx, ky): per image and output, the x offset, the y
    offset, then the kx horizontal and ky vertical weights (zero past an image's own taps). Both
    resamplers read it; one array, so one copy to the device."""
    kx = max(p.kkx.shape[1] for p in plans)
    ky = max(p.kky.shape[1] for p in plans)
    table = np.zeros((len(plans), size, 2 + kx + ky), np.int32)
    for i, p in enumerate(plans):
        table[i, :, 0], table[i, :, 1] = p.offx, p.offy
        table[i, :, 2:2 + p.kkx.shape[1]] = p.kkx
        table[i, :, 2 + kx:2 + kx + p.kky.shape[1]] = p.kky
    return table, kx, ky
