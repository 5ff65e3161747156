"""The Triton resampling kernel (calib.data.resample_kernel): Pillow's pixels bit for bit.

Without a GPU it runs under Triton's interpreter when triton is installed (not in CI: the wheel is
large); on a GPU (`pytest -m gpu`) on many sizes, both presets and both of Pillow's pass orders.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calib.data.gpu_decode import normalise, resample_pil
from calib.data.transforms import pil_pixels
from calib.data.transforms import get_preset
from calib.errors import CalibError

# (w, h): downscale and upscale, both orientations, and shapes where Pillow resizes vertically first.
SIZES = [(250, 340), (340, 250), (97, 300), (40, 900), (1200, 90), (224, 224), (500, 375)]


def _triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + 31 * w + h)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.sin(xx / 7.0)[..., None] * 60 + np.cos(yy / 11.0)[..., None] * 60 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))


def _check(device: str, sizes, presets=("efficientnet-lite", "torchvision")) -> None:
    import torch

    for preset in presets:
        pre = get_preset(preset)
        images = [_image(w, h) for w, h in sizes]
        ref = np.stack([pre(im) for im in images])
        tensors = [torch.from_numpy(pil_pixels(im)).to(device) for im in images]
        got = resample_pil(tensors, pre, kernel="triton")
        np.testing.assert_array_equal(normalise(got, pre).cpu().numpy(), ref)
        assert torch.equal(got, resample_pil(tensors, pre, kernel="matmul"))


def test_mixed_pass_orders_on_the_matmul_path():
    import torch

    pre = get_preset("efficientnet-lite", 32)
    images = [_image(w, h) for w, h in [(20, 150), (150, 20), (40, 44), (64, 48)]]
    ref = np.stack([pre(im) for im in images])
    tensors = [torch.from_numpy(pil_pixels(im)) for im in images]
    np.testing.assert_array_equal(normalise(resample_pil(tensors, pre, kernel="matmul"), pre).numpy(), ref)


def test_packed_images_address_each_planar_image():
    import torch

    from calib.data.packed import PackedImages

    images = [torch.from_numpy(pil_pixels(_image(w, h))) for w, h in [(5, 7), (3, 2), (4, 4)]]
    packed = PackedImages.from_images(images)
    assert len(packed) == 3 and packed.sizes == [(7, 5), (2, 3), (4, 4)] and packed.bases == [0, 105, 123]
    for i, im in enumerate(images):
        (h, w), base = packed.sizes[i], packed.bases[i]
        c, r, k = packed.strides(i)
        view = packed.flat.as_strided((3, h, w), (c, r, k), base)
        assert torch.equal(view, im)


def test_no_images_is_a_one_line_error():
    with pytest.raises(CalibError, match="at least one image"):
        resample_pil([], get_preset("efficientnet-lite"))


def test_unknown_kernel_is_a_one_line_error():
    import torch

    with pytest.raises(CalibError, match="unknown resampling kernel 'fast'"):
        resample_pil([torch.zeros((3, 8, 8), dtype=torch.uint8)], get_preset("efficientnet-lite"), kernel="fast")


def test_triton_kernel_where_it_cannot_run_is_a_one_line_error(monkeypatch):
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(CalibError, match="cannot run on cpu"):
        resample_pil([torch.zeros((3, 8, 8), dtype=torch.uint8)], get_preset("efficientnet-lite"), kernel="triton")


def test_auto_on_the_cpu_is_the_matmul_path(monkeypatch):
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pre = get_preset("efficientnet-lite")
    images = [torch.from_numpy(pil_pixels(_image(w, h))) for w, h in SIZES[:3]]
    assert torch.equal(resample_pil(images, pre), resample_pil(images, pre, kernel="matmul"))


@pytest.mark.skipif(not _triton(), reason="triton is not installed")
def test_kernel_equals_pillow_under_the_interpreter(monkeypatch):
    from calib.data import resample_kernel

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    resample_kernel._kernel.cache_clear()   # the interpreter is chosen when the kernel is defined
    try:
        _check("cpu", [(60, 84), (84, 60), (20, 150), (150, 20)], presets=("efficientnet-lite",))
    finally:
        resample_kernel._kernel.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not (_cuda() and _triton()), reason="needs an NVIDIA GPU and triton")
def test_kernel_equals_pillow_on_the_gpu():
    rng = np.random.default_rng(1)
    sizes = SIZES + [(3000, 2000), (257, 256)] + [tuple(int(v) for v in rng.integers(16, 1600, 2)) for _ in range(24)]
    _check("cuda", sizes)


@pytest.mark.skipif(not _triton(), reason="triton is not installed")
def test_vertical_first_and_mixed_orders_under_the_interpreter(monkeypatch):
    import torch

    from calib.data import resample_kernel

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    resample_kernel._kernel.cache_clear()
    try:
        pre = get_preset("efficientnet-lite", 32)
        images = [_image(w, h) for w, h in [(20, 150), (150, 20), (40, 44), (1, 1), (2, 90)]]
        ref = np.stack([pre(im) for im in images])
        tensors = [torch.from_numpy(pil_pixels(im)) for im in images]
        np.testing.assert_array_equal(normalise(resample_pil(tensors, pre, kernel="triton"), pre).numpy(), ref)
    finally:
        resample_kernel._kernel.cache_clear()


def test_auto_falls_back_once_with_a_warning_but_not_on_out_of_memory(monkeypatch):
    import torch

    from calib.data import gpu_decode, resample_kernel

    pre = get_preset("efficientnet-lite", 32)
    images = [torch.from_numpy(pil_pixels(_image(40, 60)))]
    monkeypatch.setattr(resample_kernel, "available", lambda device: True)
    monkeypatch.setattr(gpu_decode, "_triton_failed", [])

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(resample_kernel, "resample", oom)
    with pytest.raises(torch.OutOfMemoryError):
        resample_pil(images, pre)
    assert gpu_decode._triton_failed == []

    def broken(*a, **k):
        raise RuntimeError("PTX compile failed")
    monkeypatch.setattr(resample_kernel, "resample", broken)
    with pytest.warns(UserWarning, match="Triton resize kernel failed .*PTX compile failed"):
        got = resample_pil(images, pre)
    assert torch.equal(got, resample_pil(images, pre, kernel="matmul"))
    assert len(gpu_decode._triton_failed) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not (_cuda() and _triton()), reason="needs an NVIDIA GPU and triton")
def test_kernel_addresses_past_two_gigabytes_on_the_gpu():
    import torch

    # One 6000x4000 photo widens every image's slab of the intermediate buffer: with 1,000 small
    # images the output offsets pass 2**31 (an int32 product there was an illegal memory access).
    pre = get_preset("efficientnet-lite")
    big = torch.from_numpy(pil_pixels(_image(6000, 4000))).cuda()
    small = torch.from_numpy(pil_pixels(_image(32, 32))).cuda()
    images = [big] + [small] * 1000
    got = resample_pil(images, pre, kernel="triton")
    assert torch.equal(got[:2], resample_pil(images[:2], pre, kernel="matmul"))
    assert torch.equal(got[-1], got[1])
