"""JPEG decoding and preprocessing on the GPU: nvJPEG, then crop + resize + normalise in torch.

Why: on a GPU machine the CPU decode workers feed about 500-1,000 images/s, while nvJPEG
(through `torchvision.io.decode_jpeg(list_of_tensors, device="cuda")`, torchvision's batched
decoder; https://pytorch.org/vision/stable/generated/torchvision.io.decode_jpeg.html) plus the
resize on the GPU reach over ten thousand.

Preprocessing must not drift from the CPU path (`calib.data.transforms.Preprocess`, PIL):

- the crop arithmetic is the CPU path's, integer for integer (`calib.data.resize_plan`);
- the resize reproduces Pillow's resampling exactly: the same filter
  coefficients (Pillow's `src/libImaging/Resample.c`: `precompute_coeffs`, bicubic a = -0.5,
  support scaled by the downscale factor, i.e. antialiased), the same 22-bit fixed-point weights
  (`normalize_coeffs_8bpc`), horizontal pass first, rounding and clamping to 8 bits after each
  pass. On a GPU with triton this is `calib.data.resample_kernel`, Pillow's own int32 sums (about
  half the stream time, measured on an H200); elsewhere both passes are float64 matrix products
  of integers below 2**53, so every sum is exact. Either way the output equals Pillow's bit for
  bit on the same decoded pixels (torch's antialiased `interpolate` is close to Pillow, not
  equal: benchmarks/gpu.py keeps it as a variant of its own, to measure the difference);
- normalisation is the same float32 `(x - mean) / std`.

What is left is the decoder: nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's
(what Pillow uses) by about one 8-bit level on average. That difference is why the decode path
is part of the cache key (`calib.data.decoders.decode_path`): a run calibrates and evaluates
through one path.

Images that are not baseline/progressive 8-bit 1- or 3-channel JPEGs (PNG, CMYK JPEG, ...) and
any image nvJPEG rejects are decoded by Pillow on the CPU, one by one, and resized on the GPU
like the others; what Pillow cannot decode either is skipped.

`decoder="pil"` (`--gpu-decode pil`) runs none of this on the GPU but the normalisation: Pillow
workers run the CPU path's own preprocessing (`calib.data.host_decode`), so its pixels are the
CPU path's by construction.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from calib.data import resample_kernel
from calib.data.cuda import to_device
from calib.data.decoders import DECODERS, decode_path
from calib.data.resize_plan import PRECISION_BITS, ImagePlan, image_plan, plan_tables
from calib.data.transforms import Preprocess, pil_pixels
from calib.errors import CalibError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# --------------------------------------------------------------------------- resampling (torch)
def _round_fixed(t: "torch.Tensor") -> "torch.Tensor":
    """Pillow's clip8: (sum + 2**21) >> 22, clamped to [0, 255] (exact in float64)."""
    half = float(1 << (PRECISION_BITS - 1))
    return t.add_(half).div_(float(1 << PRECISION_BITS)).floor_().clamp_(0.0, 255.0)


KERNELS = ("auto", "triton", "matmul")
_triton_failed: list[str] = []   # set when a Triton launch failed here: "auto" stops trying it


def resample_pil(images: Sequence["torch.Tensor"], preprocess: Preprocess, kernel: str = "auto") -> "torch.Tensor":
    """Pillow-exact crop + resize of uint8 (3, H, W) images on one device -> uint8 (N, 3, S, S).

    `kernel`: "triton" (`calib.data.resample_kernel`: Pillow's int32 arithmetic, a fraction of
    the GPU time), "matmul" (float64 products with dense weight matrices, any torch device), or
    "auto" (triton where it runs, else matmul). Both give Pillow's pixels bit for bit."""
    import torch

    if kernel not in KERNELS:
        raise CalibError(f"unknown resampling kernel '{kernel}' (choose from: {', '.join(KERNELS)})")
    if not len(images):
        raise CalibError("resample_pil needs at least one image (a batch where nothing decoded has no pixels)")
    s = preprocess.size
    sizes, device = [(int(im.shape[1]), int(im.shape[2])) for im in images], images[0].device
    plans = [image_plan(preprocess, w, h) for h, w in sizes]
    order = [p.v_first for p in plans]
    triton = _use_triton(kernel, device)

    def group(index, v_first):
        return _resample_order([images[i] for i in index], [plans[i] for i in index], preprocess, v_first, triton,
                               strict=kernel == "triton")

    if all(order) or not any(order):
        return group(range(len(plans)), order[0])
    out = torch.empty((len(plans), 3, s, s), dtype=torch.uint8, device=device)
    for flag in (False, True):
        idx = [i for i, o in enumerate(order) if o == flag]
        out[idx] = group(idx, flag)
    return out


def _use_triton(kernel: str, device) -> bool:
    """Whether `kernel` means the Triton kernel on `device`; "triton" where it cannot run is an error."""
    if kernel == "matmul":
        return False
    if kernel == "triton":
        if not resample_kernel.available(device):
            raise CalibError(f"the Triton resampling kernel cannot run on {device} (pip install triton; "
                             f"it needs a CUDA GPU)")
        return True
    return not _triton_failed and resample_kernel.available(device)


def _resample_order(images, plans: Sequence[ImagePlan], preprocess: Preprocess, v_first: bool, triton: bool,
                    strict: bool) -> "torch.Tensor":
    """One pass order's images, with the Triton kernel when `triton` (a failure is raised when
    `strict`, else said once and the matmul path takes over for good), else the matmul path."""
    import torch

    if triton and (strict or not _triton_failed):
        try:
            return resample_kernel.resample(images, plans, plan_tables(plans, preprocess.size), v_first)
        except torch.OutOfMemoryError:
            raise   # not a Triton problem, and the matmul path needs more memory still
        except Exception as e:  # a Triton that cannot compile here: the exact matmul path, said once
            if strict:
                raise
            import warnings

            _triton_failed.append(f"{type(e).__name__}: {e}")
            warnings.warn(f"the Triton resize kernel failed ({_triton_failed[0].splitlines()[0][:200]}); "
                          f"resizing with the slower exact matmul path from now on", stacklevel=3)
    return _resample_group(images, plans, preprocess, v_first)


def _dense_on_device(offsets: "torch.Tensor", weights: "torch.Tensor", span: int) -> "torch.Tensor":
    """(n, S, span) float64 weight matrices built on the device from compact weights (n, S, k)
    and offsets (n, S): only the compact numbers cross the bus."""
    import torch

    n, s, k = weights.shape
    idx = offsets.unsqueeze(2) + torch.arange(k, device=weights.device).view(1, 1, k)
    idx = idx.clamp_(0, span - 1)   # taps past the span carry weight 0: adding them is harmless
    return torch.zeros((n, s, span), dtype=torch.float64, device=weights.device).scatter_add_(2, idx, weights)


def _gather_crops(images, plans, span_y: int, span_x: int) -> "torch.Tensor":
    """uint8 (n, 3, span_y, span_x): each image's crop window, in a constant number of kernels
    (one concatenation, one gather) whatever n is. Rows and columns past an image's own window
    repeat its last pixel; its weights there are 0, so they add nothing to the products."""
    import torch

    device = images[0].device
    n = len(images)
    meta = np.empty((7, n), dtype=np.int64)
    base = 0
    for i, (im, p) in enumerate(zip(images, plans)):
        h, w = int(im.shape[1]), int(im.shape[2])
        meta[:, i] = (base, h * w, w, p.y0, p.x0, p.sy, p.sx)
        base += 3 * h * w
    flat = torch.cat([im.reshape(-1) for im in images])
    b, hw, w, y0, x0, sy, sx = to_device(meta, device).unbind(0)
    ys = torch.minimum(torch.arange(span_y, device=device).view(1, -1), (sy - 1).view(-1, 1)) + y0.view(-1, 1)
    xs = torch.minimum(torch.arange(span_x, device=device).view(1, -1), (sx - 1).view(-1, 1)) + x0.view(-1, 1)
    channel = torch.arange(3, device=device).view(1, 3, 1, 1) * hw.view(-1, 1, 1, 1)
    idx = (b.view(-1, 1, 1, 1) + channel + (ys * w.view(-1, 1)).view(n, 1, span_y, 1) + xs.view(n, 1, 1, span_x))
    return flat[idx]


def _resample_group(images, plans: Sequence[ImagePlan], preprocess: Preprocess, v_first: bool) -> "torch.Tensor":
    import torch

    device = images[0].device
    span_x, span_y = max(p.sx for p in plans), max(p.sy for p in plans)
    table, kx, ky = plan_tables(plans, preprocess.size)
    dev = to_device(table, device)   # offsets and weights of every image: one copy
    weights = dev[:, :, 2:].to(torch.float64)
    wx_t = _dense_on_device(dev[:, :, 0], weights[:, :, :kx], span_x).transpose(1, 2).unsqueeze(1)   # (n, 1, Wx, S)
    wy_t = _dense_on_device(dev[:, :, 1], weights[:, :, kx:], span_y).unsqueeze(1)                   # (n, 1, S, Hy)
    x = _gather_crops(images, plans, span_y, span_x).to(torch.float64)
    # Each pass is a product of integers (exact in float64), rounded to 8 bits like Pillow.
    if v_first:
        return _round_fixed(torch.matmul(_round_fixed(torch.matmul(wy_t, x)), wx_t)).to(torch.uint8)
    return _round_fixed(torch.matmul(wy_t, _round_fixed(torch.matmul(x, wx_t)))).to(torch.uint8)


def normalise(pixels: "torch.Tensor", preprocess: Preprocess) -> "torch.Tensor":
    """uint8 (N, 3, S, S) -> float32, the CPU path's `(x - mean) / std` (same float32 ops), its
    channels reversed for a BGR model as the CPU path reverses them."""
    import torch

    mean, std = _constants(tuple(preprocess.mean), tuple(preprocess.std), str(pixels.device))
    x = (pixels.to(torch.float32) - mean) / std
    return x.flip(1) if preprocess.channel_order == "bgr" else x


def normalise_rows(rows: "torch.Tensor", preprocess: Preprocess) -> "torch.Tensor":
    """uint8 (N, S, S, 3) rows (`Preprocess.pixels`) -> the CPU path's float32 (N, 3, S, S) batch."""
    return normalise(rows.permute(0, 3, 1, 2).contiguous(), preprocess)


@lru_cache(maxsize=16)
def _constants(mean: tuple, std: tuple, device: str):
    """mean and std as (1, 3, 1, 1) float32 tensors on `device`, made once (a tensor made from
    Python numbers is a synchronous copy: not something to do per batch)."""
    import torch

    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


# --------------------------------------------------------------------------- decoding
def jpeg_components(data: bytes) -> int | None:
    """The component count of an 8-bit JPEG's frame header (1 gray, 3 YCbCr, 4 CMYK), or None
    when `data` is not a JPEG nvJPEG should see (not JPEG, 12-bit, lossless, truncated)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive Huffman
            if i + 10 > n or data[i + 4] != 8:
                return None
            return data[i + 9]
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None              # lossless / arithmetic coding: leave to Pillow
        if marker == 0xDA:           # scan before any frame header: malformed
            return None
        i += 2 + length
    return None


class GpuDecoder:
    """Decode + preprocess batches on one CUDA device.

    `decoder="nvjpeg"`: nvJPEG on the GPU (Pillow per image where nvJPEG cannot), then crop and
    resize on the GPU. `decoder="pil"`: the CPU path's own preprocessing (Pillow decode, crop and
    resize) up to the normalisation, which runs on the GPU; a batch stream runs it in worker
    processes (`calib.data.host_decode`), `__call__` in this process, one image after the other.

    `__call__(items)` takes, per image, the encoded bytes or a zero-argument callable returning a
    PIL image (sources that do not read files), and returns (float32 (n, 3, S, S) on the device,
    indices of the items that made it, indices skipped)."""

    DECODERS = DECODERS

    def __init__(self, preprocess: Preprocess, device: str = "cuda", decoder: str = "nvjpeg") -> None:
        from calib.placement import require_torch_cuda

        if decoder not in self.DECODERS:
            raise CalibError(f"unknown GPU decoder '{decoder}' (choose from: {', '.join(self.DECODERS)})")
        self.torch, self.device = require_torch_cuda(device)
        if self.device.index is None:   # "cuda": the current device, named (threads need the index)
            self.device = self.torch.device("cuda", self.torch.cuda.current_device())
        if decoder == "nvjpeg":
            try:
                import torchvision.io  # noqa: F401
            except ImportError:
                from calib.errors import MissingDependency
                raise MissingDependency("torchvision", "nvJPEG decoding on the GPU") from None
        self.preprocess = preprocess
        self.decoder = decoder
        self.path = decode_path(preprocess, decoder)
        self.fallbacks = 0   # images Pillow decoded because nvJPEG could not

    def decode(self, items: Sequence[bytes | Callable]) -> list["torch.Tensor | None"]:
        """uint8 (3, H, W) device tensors, None for images that cannot be decoded."""
        out: list = [None] * len(items)
        jpegs = []
        if self.decoder == "nvjpeg":
            jpegs = [i for i, it in enumerate(items)
                     if isinstance(it, (bytes, bytearray, memoryview)) and jpeg_components(it) in (1, 3)]
        if jpegs:
            for i, t in zip(jpegs, self._nvjpeg([items[i] for i in jpegs])):
                out[i] = t
        for i, it in enumerate(items):
            if out[i] is None:
                out[i] = self._pil(it)
        return out

    def _nvjpeg(self, datas: list) -> list:
        torch = self.torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass  # one bad image fails the whole batch: retry one by one
        out = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                out.append(None)
        return out

    def _pil(self, item) -> "torch.Tensor | None":
        from PIL import Image

        try:
            image = item() if callable(item) else Image.open(io.BytesIO(bytes(item)))
            pixels = pil_pixels(image)
        except Exception:  # corrupt or unsupported: skipped, as on the CPU path
            return None
        if self.decoder == "nvjpeg":
            self.fallbacks += 1
        return self.torch.from_numpy(pixels).to(self.device, non_blocking=False)

    def pixels(self, decoded: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """Crop + resize decoded uint8 images to uint8 (n, 3, S, S), as Pillow does."""
        return resample_pil(decoded, self.preprocess)

    def preprocess_decoded(self, decoded: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """Decoded uint8 images -> the float32 (n, 3, S, S) batch the models take."""
        return normalise(self.pixels(decoded), self.preprocess)

    def from_crops(self, rows: "torch.Tensor") -> "torch.Tensor":
        """uint8 (n, S, S, 3) crops (`Preprocess.pixels`, Pillow's) -> the float32 (n, 3, S, S) batch."""
        return normalise_rows(rows, self.preprocess)

    def _pil_crops(self, items: Sequence[bytes | Callable]) -> tuple["torch.Tensor | None", list[int], list[int]]:
        """The CPU path's preprocessing image by image in this process, then normalised on the GPU."""
        from PIL import Image

        rows, ok, bad = [], [], []
        for i, item in enumerate(items):
            try:
                rows.append(self.preprocess.pixels(item() if callable(item) else Image.open(io.BytesIO(bytes(item)))))
                ok.append(i)
            except Exception:  # corrupt or unsupported: skipped, as on the CPU path
                bad.append(i)
        if not rows:
            return None, ok, bad
        return self.from_crops(self.torch.from_numpy(np.stack(rows)).to(self.device)), ok, bad

    def __call__(self, items: Sequence[bytes | Callable]) -> tuple["torch.Tensor | None", list[int], list[int]]:
        if self.decoder == "pil":
            return self._pil_crops(items)
        decoded = self.decode(items)
        ok = [i for i, t in enumerate(decoded) if t is not None]
        bad = [i for i, t in enumerate(decoded) if t is None]
        if not ok:
            return None, ok, bad
        return self.preprocess_decoded([decoded[i] for i in ok]), ok, bad
