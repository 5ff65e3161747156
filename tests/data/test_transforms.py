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
