"""Pillow-exact crop + resize as two Triton kernels: the GPU resize of `calib.data.gpu_decode`.

Why: the reference implementation there (`resample_pil` with `kernel="matmul"`) multiplies each
crop by dense float64 weight matrices: exact, but it reads and writes every pixel in float64
several times and multiplies by mostly-zero matrices. On an H200 one batch of 256 sample images
kept the resize's stream busy for 8.2 ms; an earlier build of this kernel (which still let Triton
specialise on its integer arguments) for 4.5 ms (benchmarks/gpu.json). It does what Pillow's `ImagingResampleHorizontal_8bpc` /
`ImagingResampleVertical_8bpc` do (`src/libImaging/Resample.c`): for each output pixel, an int32
sum of the filter's taps (22-bit fixed-point weights times 8-bit pixels) started at 2**21, shifted
right by 22 and clamped to [0, 255]. That is integer arithmetic, so it equals Pillow bit for bit by
construction; the weights and tap offsets are the very tables of `resize_plan.image_plan`.

One kernel resamples one axis of a batch of images of different sizes. Each image has its own
addressing (base, channel/kept-axis/tap strides, window origin, extents), so the same kernel
runs the first pass on the decoded images (packed one after the other in one uint8 buffer) and the
second pass on the intermediate rows, in either of Pillow's pass orders.

Triton comes with CUDA builds of torch on Linux (https://triton-lang.org). Where it cannot be
imported, `gpu_decode` falls back to the matmul implementation (same pixels, slower).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

from calib.data.cuda import to_device
from calib.data.packed import PackedImages
from calib.data.resize_plan import PRECISION_BITS, ImagePlan

if TYPE_CHECKING:  # pragma: no cover
    import torch

BLOCK_A, BLOCK_J = 32, 32    # a tile: 32 kept-axis lines x 32 outputs along the resampled axis


@lru_cache(maxsize=1)
def _kernel():
    """The compiled-on-first-use Triton kernel (imported lazily: triton is heavy and GPU-only)."""
    import triton
    import triton.language as tl

    # Only the block sizes are compile-time: tap counts, strides and table offsets change from batch
    # to batch, and specialising on them (Triton's default) would compile the kernel again each time.
    @triton.jit(do_not_specialize=["off", "w", "J", "K", "off_si", "off_sj", "w_si", "w_sj",
                                   "dst_si", "dst_sc", "dst_sa", "dst_sj"])
    def resample_axis(src, dst, meta, off, w, J, K, off_si, off_sj, w_si, w_sj,
                      dst_si, dst_sc, dst_sa, dst_sj,
                      BLOCK_A: tl.constexpr, BLOCK_J: tl.constexpr, HALF: tl.constexpr, SHIFT: tl.constexpr):
        pid = tl.program_id(0)
        i = (pid // 3).to(tl.int64)   # 64-bit: i * dst_si passes 2**31 in a large batch with one large image
        c = pid % 3
        a = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
        j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
        m = meta + i * 8
        base = tl.load(m)
        s_c = tl.load(m + 1)
        s_a = tl.load(m + 2)
        s_k = tl.load(m + 3)
        a0 = tl.load(m + 4)
        o = tl.load(m + 5)
        extent_a = tl.load(m + 6)
        span = tl.load(m + 7)
        mask_a = a < extent_a
        mask_j = j < J
        first = tl.load(off + i * off_si + j * off_sj, mask=mask_j, other=0)
        row = base + c * s_c + (a[:, None] + a0) * s_a
        acc = tl.full((BLOCK_A, BLOCK_J), HALF, tl.int32)
        k = 0
        while k < K:   # (a while loop: Triton's interpreter cannot take a runtime bound in range())
            wk = tl.load(w + i * w_si + j * w_sj + k, mask=mask_j, other=0)
            pos = first + k
            ok = mask_j & (pos < span)
            px = tl.load(src + row + (o + pos[None, :]) * s_k, mask=mask_a[:, None] & ok[None, :], other=0)
            acc += px.to(tl.int32) * wk[None, :]
            k += 1
        out = tl.minimum(tl.maximum(acc >> SHIFT, 0), 255).to(tl.uint8)
        tl.store(dst + i * dst_si + c * dst_sc + a[:, None] * dst_sa + j[None, :] * dst_sj, out,
                 mask=mask_a[:, None] & mask_j[None, :])

    return resample_axis


def available(device: "torch.device") -> bool:
    """Whether the kernel can run on `device`: a CUDA device with triton importable, or the CPU
    under Triton's interpreter (TRITON_INTERPRET=1: how the tests run it without a GPU)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        _kernel()
    except Exception:   # no triton, or one that cannot compile here: the matmul path is exact too
        return False
    return True


def resample(images: Sequence["torch.Tensor"], plans: Sequence[ImagePlan],
             tables: tuple[np.ndarray, int, int], v_first: bool) -> "torch.Tensor":
    """uint8 (3, H, W) images (one device) -> uint8 (n, 3, size, size): Pillow's crop + resize with
    every image's `ImagePlan` (all of one pass order, `v_first`) and their offsets and weights,
    `resize_plan.plan_tables(plans, size)`."""
    import torch

    packed = PackedImages.from_images(images)
    tables, kx, ky = tables                    # offx, offy, kkx..., kky... per image and output
    device = packed.device
    n, s = len(packed), tables.shape[1]
    meta = np.zeros((2, n, 8), np.int64)       # per pass: addressing per image
    span_y = max(p.sy for p in plans)
    span_x = max(p.sx for p in plans)
    for i, p in enumerate(plans):
        base = packed.bases[i]
        s_c, s_row, s_col = packed.strides(i)
        if v_first:   # columns of the window first: (base, s_c, s_a, s_k, a0, o, extent, span)
            meta[0, i] = (base, s_c, s_col, s_row, p.x0, p.y0, p.sx, p.sy)
            meta[1, i] = (i * 3 * s * span_x, s * span_x, span_x, 1, 0, 0, s, p.sx)
        else:         # rows of the window first
            meta[0, i] = (base, s_c, s_row, s_col, p.y0, p.x0, p.sy, p.sx)
            meta[1, i] = (i * 3 * span_y * s, span_y * s, 1, s, 0, 0, s, p.sy)
    flat = packed.flat
    tables_d, meta_d = to_device(tables, device), to_device(meta, device)
    offx, offy = tables_d[:, :, 0], tables_d[:, :, 1]
    kkx, kky = tables_d[:, :, 2:2 + kx], tables_d[:, :, 2 + kx:]
    out = torch.empty((n, 3, s, s), dtype=torch.uint8, device=device)
    kernel = _kernel()
    consts = dict(BLOCK_A=BLOCK_A, BLOCK_J=BLOCK_J, HALF=1 << (PRECISION_BITS - 1), SHIFT=PRECISION_BITS)

    def run(src, dst, meta_pass, off, weights, k, extent, dst_strides):
        grid = (n * 3, -(-extent // BLOCK_A), -(-s // BLOCK_J))
        kernel[grid](src, dst, meta_pass, off, weights, s, k, off.stride(0), off.stride(1),
                     weights.stride(0), weights.stride(1), *dst_strides, **consts)

    # Triton launches on the current CUDA device, not on the tensors' one.
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        if v_first:
            mid = torch.empty((n, 3, s, span_x), dtype=torch.uint8, device=device)
            run(flat, mid, meta_d[0], offy, kky, ky, span_x, (3 * s * span_x, s * span_x, 1, span_x))
            run(mid, out, meta_d[1], offx, kkx, kx, s, (3 * s * s, s * s, s, 1))
        else:
            mid = torch.empty((n, 3, span_y, s), dtype=torch.uint8, device=device)
            run(flat, mid, meta_d[0], offx, kkx, kx, span_y, (3 * span_y * s, span_y * s, s, 1))
            run(mid, out, meta_d[1], offy, kky, ky, s, (3 * s * s, s * s, 1, s))
    return out
