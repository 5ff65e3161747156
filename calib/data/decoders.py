"""The decoders, by name, and the name of the path that made a batch's pixels (`decode_path`).

Why a module of its own: the decode path is part of the cache key and of every report's header,
so the CPU path needs it too, and it must get it without importing any GPU code (torch,
torchvision, Triton: `calib.data.gpu_decode`, `calib.data.gpu_stream`). One vocabulary, used
everywhere in calib.data: a *decoder* is how encoded images become a batch's pixels.

- "cpu" (`CPU_DECODER`): the CPU path, Pillow in worker processes (`calib.data.loader`);
- on a GPU (`DECODERS`, `--gpu-decode`): "nvjpeg", nvJPEG on the GPU then Pillow-exact resizing
  there (`calib.data.gpu_decode`), or "pil", the CPU path's own preprocessing in worker processes,
  normalised on the GPU (`calib.data.host_decode`).

nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's (what Pillow uses) by about one
8-bit level on average, so a cache calibrated through one path is not reused through another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:  # pragma: no cover
    from calib.data.transforms import Preprocess
    from calib.placement import Placement

CPU_DECODER = "cpu"            # the CPU path: Pillow in worker processes
DECODERS = ("nvjpeg", "pil")   # on a GPU (--gpu-decode): nvJPEG, or Pillow (calib.data.host_decode)
CPU_DECODE_PATH = "pil"        # the CPU path's pixels, wherever they were made
ARRAYS_DECODE_PATH = "arrays"  # named arrays (calib.data.arrays): nothing is decoded, on any device


def decode_path(preprocess: Preprocess | None = None, decoder: str = "nvjpeg") -> str:
    """A short name of how pixels were produced; part of the cache key, shown in reports.

    "pil" for the CPU path's pixels (Pillow decode and Pillow's resampling, on the CPU: the CPU
    path, or the GPU path's Pillow workers); e.g. "nvjpeg+pil-bicubic" (nvJPEG decode,
    Pillow-exact resampling on the GPU)."""
    if decoder in (CPU_DECODER, "pil"):
        return CPU_DECODE_PATH
    interp = preprocess.interpolation if preprocess is not None else "bicubic"
    return f"{decoder}+pil-{interp}"


def decode_for(preprocess: Preprocess, placement: Placement, gpu_decode: str = "nvjpeg") -> str:
    """The decode path a pass on `placement` uses: Pillow on the CPU; on a GPU nvJPEG with
    Pillow-exact resampling (calib.data.gpu_decode), or with `gpu_decode="pil"` Pillow in worker
    processes (calib.data.host_decode): the CPU path's pixels, so the CPU path's key too. A cache
    is then reused across the two providers, as it is across CPU machines: their FP32 activations
    differ by float rounding only (measured in benchmarks/RESULTS.md). Named arrays are decoded
    by nothing: "arrays", on any device."""
    if getattr(preprocess, "arrays", False):
        return ARRAYS_DECODE_PATH
    return decode_path(preprocess, gpu_decode if placement.on_gpu else "cpu")
