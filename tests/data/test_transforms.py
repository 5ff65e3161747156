from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from calib.data.transforms import efficientnet_lite, get_preset, to_rgb, torchvision_imagenet
from calib.errors import CalibError


def test_efficientnet_lite_normalisation_is_tf_style():
    # (x - 127) / 128: a mid-gray 127 image is exactly 0, white is 1.
    pre = efficientnet_lite(224)
    assert np.all(pre(Image.new("RGB", (300, 256), (127, 127, 127))) == 0)
    np.testing.assert_allclose(pre(Image.new("RGB", (256, 256), (255, 255, 255))), 1.0)


def test_efficientnet_lite_crops_224_of_256_of_the_short_side():
    # Left half black, right half white, 512 wide: the padded center crop keeps 224/256 of the
    # 256 short side (224 px), i.e. columns 144..367, so the boundary stays in the middle.
    img = np.zeros((256, 512, 3), np.uint8)
    img[:, 256:] = 255
    x = efficientnet_lite(224)(Image.fromarray(img))
    assert x.shape == (3, 224, 224)
    row = x[0, 100]
    assert row[:100].max() < -0.9 and row[124:].min() > 0.9


def test_torchvision_preset_uses_imagenet_mean_std():
    x = torchvision_imagenet()(Image.new("RGB", (320, 256), (124, 116, 104)))
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), [0.0, 0.0, 0.0], atol=0.02)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (20, 10), (10, 200, 30)).convert(mode)
    assert to_rgb(img).mode == "RGB"


def test_unknown_preset():
    with pytest.raises(CalibError, match="unknown preprocessing preset"):
        get_preset("nope")
    assert get_preset("efficientnet-lite", 240).size == 240


def _png(width, height, bit_depth, color_type, rows) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)

    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_gray_is_scaled_not_clipped(mode):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    img = Image.frombytes(mode, (4, 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    out = np.asarray(to_rgb(img))
    assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16_bit_png_files_of_every_colour_type(tmp_path):
    import io

    gray = np.array([[0, 40000, 65535]], np.uint16)
    rgb = np.zeros((1, 3, 3), np.uint16)
    rgb[0, :, 0], rgb[0, :, 1], rgb[0, :, 2] = 65535, 32768, 2570
    la = np.stack([gray, np.full_like(gray, 65535)], axis=-1)
    for color_type, rows, expect in ((0, gray, [[0, 0, 0], [156, 156, 156], [255, 255, 255]]),
                                     (2, rgb.reshape(1, 9), [[255, 128, 10]] * 3),
                                     (4, la.reshape(1, 6), [[0, 0, 0], [156, 156, 156], [255, 255, 255]])):
        img = Image.open(io.BytesIO(_png(3, 1, 16, color_type, rows)))
        out = np.asarray(to_rgb(img)).astype(int)
        assert np.abs(out[0] - np.array(expect)).max() <= 1, (color_type, out)


def test_32_bit_and_float_images():
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 200, np.int32))))[0, 0, 0] == 200     # 8-bit values
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 40000, np.int32))))[0, 0, 0] == 156   # 16-bit values
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32))))[0, 0, 0] == 128   # 0..1 floats
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), np.nan, np.float32))))[0, 0, 0] == 0


def test_transparent_palette_la_and_cmyk():
    assert to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)        # on white
    pa = Image.new("RGBA", (2, 2), (10, 200, 30, 255)).convert("PA")
    assert np.abs(np.subtract(to_rgb(pa).getpixel((0, 0)), (10, 200, 30))).max() < 8
    p = Image.new("P", (2, 2), 0)
    p.putpalette([10, 200, 30] + [0] * 765)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("size, resize_to", [(16, 256), (224, 256), (256, 256), (299, 342), (320, 366), (512, 585)])
def test_the_torchvision_preset_resizes_without_stretching_at_every_input_size(size, resize_to):
    # An input over 256 used to be cropped from a short side resized to 256: each axis was then
    # stretched by its own factor (0.68 and 0.85 for a 500 x 375 photo at 320).
    pre = get_preset("torchvision", size)
    assert pre.resize_to == resize_to
    for width, height in ((500, 375), (375, 500), (640, 480)):
        g = pre.geometry(width, height)
        assert abs(g.scale_x - g.scale_y) < 2 / min(width, height), (width, height, g)
        pixels = pre.pixels(Image.new("RGB", (width, height), (10, 20, 30)))
        assert pixels.shape == (size, size, 3)


def test_a_resize_below_the_crop_is_refused_in_one_line():
    with pytest.raises(CalibError, match="would stretch the image"):
        replace(get_preset("torchvision", 224), size=320)
