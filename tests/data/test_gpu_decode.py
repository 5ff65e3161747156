"""GPU decoding and preprocessing: Pillow-exact resampling (run on the CPU
here, with torch CPU tensors), JPEG header parsing, and, with CUDA, nvJPEG batches vs the CPU path.

The `gpu` tests read an ImageNet-layout folder named by CALIB_GPU_IMAGES (default `.gpu-images`)
when it exists, else images generated here (JPEG of several sizes, grayscale, PNG, CMYK, corrupt).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calib.data.dataset import Dataset, take
from calib.data.gpu_decode import jpeg_components, normalise, resample_pil
from calib.data.transforms import pil_pixels
from calib.data.loader import iter_batches
from calib.data.transforms import get_preset
from calib.errors import CalibError


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


gpu = pytest.mark.skipif(not (_cuda() and _torchvision()), reason="needs an NVIDIA GPU with CUDA and torchvision")

SIZES = [(250, 340), (340, 250), (500, 375), (375, 500), (224, 224), (100, 100), (1000, 700), (257, 256),
         (256, 1024), (97, 300)]


def _image(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + w * 7 + h)
    # Smooth plus noise: like a photo, and every filter tap matters.
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 9.0)[..., None] * 60 + np.cos(yy / 13.0)[..., None] * 60 + 128)
    pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("preset", ["efficientnet-lite", "torchvision"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pil_resampling_on_torch_equals_the_cpu_path_bit_for_bit(preset, mode):
    import torch

    pre = get_preset(preset)
    images = [_image(w, h, mode) for w, h in SIZES]
    ref = np.stack([pre(im) for im in images])
    pixels = resample_pil([torch.from_numpy(pil_pixels(im)) for im in images], pre)
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (len(images), 3, pre.size, pre.size)
    got = normalise(pixels, pre).numpy()
    np.testing.assert_array_equal(got, ref)


def test_pil_resampling_on_real_photos(imagenet_sample):
    import torch

    files = sorted((imagenet_sample / "val").glob("*/*"))[::25]
    pre = get_preset("efficientnet-lite")
    # The sample is stored at short side 256: scale it so downscaling and upscaling both happen.
    images = [Image.open(f).convert("RGB") for f in files]
    images = [im.resize((int(im.width * f), int(im.height * f)), Image.Resampling.BILINEAR)
              for im, f in zip(images, [0.6, 1.0, 1.7] * len(images))]
    ref = np.stack([pre(im) for im in images])
    got = normalise(resample_pil([torch.from_numpy(pil_pixels(im)) for im in images], pre), pre).numpy()
    np.testing.assert_array_equal(got, ref)


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_jpeg_components():
    rgb = _image(64, 48)
    assert jpeg_components(_encoded(rgb, "JPEG")) == 3
    assert jpeg_components(_encoded(rgb.convert("L"), "JPEG")) == 1
    assert jpeg_components(_encoded(rgb.convert("CMYK"), "JPEG")) == 4
    assert jpeg_components(_encoded(rgb, "JPEG", progressive=True)) == 3
    assert jpeg_components(_encoded(rgb, "PNG")) is None
    assert jpeg_components(b"\xff\xd8\xff\xe0 not really a jpeg") is None
    assert jpeg_components(_encoded(rgb, "JPEG")[:20]) is None
    assert jpeg_components(b"") is None


def test_decoder_without_cuda_is_a_one_line_error(monkeypatch):
    import torch

    from calib.data.gpu_decode import GpuDecoder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CalibError) as info:
        GpuDecoder(get_preset("efficientnet-lite"), "cuda")
    assert "\n" not in str(info.value) and "CUDA" in str(info.value)


# ----------------------------------------------------------------------------- on a GPU
def _generated_folder(root: Path) -> Path:
    from calib.data.classes import wnid_to_index

    wnids = sorted(wnid_to_index())[:3]
    for i, (w, h) in enumerate(SIZES * 2):
        folder = root / wnids[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        image = _image(w, h, "L" if i % 5 == 0 else "RGB", seed=i)
        if i % 7 == 3:
            image.save(folder / f"img_{i:03d}.png")
        elif i % 7 == 5:
            image.convert("CMYK").save(folder / f"img_{i:03d}.JPEG")
        else:
            image.save(folder / f"img_{i:03d}.JPEG", quality=90)
    (root / wnids[0] / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Dataset:
    from calib.data.sources import imagenet_val

    root = _generated_folder(tmp_path_factory.mktemp("gpu-decode"))
    return Dataset.of(imagenet_val(root), get_preset("efficientnet-lite"))


@pytest.fixture(scope="module")
def photos() -> Dataset | None:
    from calib.data.sources import imagenet_val

    folder = Path(os.environ.get("CALIB_GPU_IMAGES", ".gpu-images"))
    if not folder.is_dir():
        return None
    return take(Dataset.of(imagenet_val(folder), get_preset("efficientnet-lite")), 61)


@gpu
@pytest.mark.gpu
def test_pil_decoder_on_gpu_equals_cpu_path_bit_for_bit(generated):
    from calib.data.gpu_stream import gpu_batches

    cpu = list(iter_batches(generated, 8, workers=0))
    got = list(gpu_batches(generated, 8, "cuda", decoder="pil"))
    assert [b.keys for b in got] == [b.keys for b in cpu]
    for g, c in zip(got, cpu):
        np.testing.assert_array_equal(g.images.cpu().numpy(), c.images)
        np.testing.assert_array_equal(g.labels, c.labels)


@gpu
@pytest.mark.gpu
def test_pil_decoder_workers_follow_the_cpu_path_on_doubtful_files(tmp_path):
    """Preprocessed in worker processes into shared memory, normalised on the GPU: Pillow's pixels,
    and files cut short, with bytes after EOI or in CMYK end as the CPU path decides."""
    from calib.data.classes import wnid_to_index
    from calib.data.gpu_stream import gpu_batches
    from calib.data.sources import imagenet_val

    folder = tmp_path / sorted(wnid_to_index())[0]
    folder.mkdir()
    for i, (w, h) in enumerate(SIZES):
        data = _encoded(_image(w, h, "L" if i % 4 == 1 else "RGB", seed=i), "JPEG", quality=85,
                        progressive=i % 3 == 0)
        (folder / f"ok_{i}.JPEG").write_bytes(data)
        (folder / f"cut_{i}.JPEG").write_bytes(data[:len(data) * 2 // 3])
        (folder / f"tail_{i}.JPEG").write_bytes(data + b"\x00\x00junk")
    (folder / "cmyk.JPEG").write_bytes(_encoded(_image(90, 60).convert("CMYK"), "JPEG"))
    data = Dataset.of(imagenet_val(tmp_path), get_preset("efficientnet-lite"))
    cpu = list(iter_batches(data, 16, workers=0))
    got = list(gpu_batches(data, 16, "cuda", decoder="pil", workers=3))
    assert [b.keys for b in got] == [b.keys for b in cpu]
    for g, c in zip(got, cpu):
        np.testing.assert_array_equal(g.images.cpu().numpy(), c.images)


@gpu
@pytest.mark.gpu
def test_nvjpeg_batches_follow_the_cpu_path(generated):
    from calib.data.gpu_decode import jpeg_components
    from calib.data.gpu_stream import gpu_batches
    from calib.data.loader import SkipLog

    cpu = list(iter_batches(generated, 8, workers=0))
    skips = SkipLog()
    got = list(gpu_batches(generated, 8, "cuda", skips=skips))
    assert [b.keys for b in got] == [b.keys for b in cpu]
    assert [k for k in skips.skipped] == [s.key for s in generated.samples if s.key.endswith("broken.JPEG")]
    for g, c in zip(got, cpu):
        x = g.images.cpu().numpy()
        assert x.shape == c.images.shape and x.dtype == np.float32
        for key, a, b in zip(g.keys, x, c.images):
            diff = np.abs(a - b) * 128
            data = Path(key).read_bytes()
            if jpeg_components(data) not in (1, 3):
                np.testing.assert_array_equal(a, b)   # Pillow fallback: the CPU path's pixels
            else:
                assert diff.mean() < 8.0, key   # noise images: chroma upsampling differs most


@gpu
@pytest.mark.gpu
def test_nvjpeg_on_photos_is_close_to_pil(photos):
    from calib.data.gpu_stream import gpu_batches

    if photos is None:
        pytest.skip("no .gpu-images folder (CALIB_GPU_IMAGES)")
    cpu = np.concatenate([b.images for b in iter_batches(photos, 16, workers=0)])
    got = np.concatenate([b.images.cpu().numpy() for b in gpu_batches(photos, 16, "cuda")])
    diff = np.abs(got - cpu) * 128
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 16
