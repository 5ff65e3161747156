"""--mean, --std and --channel-order (calib.data.transforms.normalised): torchvision's convention
(values on the [0, 1] pixel scale, R, G, B), the tensor a BGR model gets for a known pixel on every
decode path, the preset's params (and so the cache key) changed only by what was given, and the
defaults serializing exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calib.data.transforms import get_preset, normalised, parse_channels
from calib.errors import CalibError

PIXEL = (200, 100, 50)   # R, G, B


def test_bgr_with_mean_and_std_gives_the_expected_tensor_for_a_known_pixel():
    pre = normalised(get_preset("letterbox", 8), mean="0.5,0.4,0.3", std="0.2,0.25,0.5", channel_order="bgr")
    x = pre(Image.new("RGB", (8, 8), PIXEL))
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    r, g, b = (v / 255 for v in PIXEL)
    expected = [(b - 0.3) / 0.5, (g - 0.4) / 0.25, (r - 0.5) / 0.2]   # channel 0 is blue
    for channel, value in enumerate(expected):
        assert np.allclose(x[channel], value, atol=1e-6), (channel, float(x[channel, 0, 0]), value)
    rgb = normalised(get_preset("letterbox", 8), mean="0.5,0.4,0.3", std="0.2,0.25,0.5")(Image.new("RGB", (8, 8), PIXEL))
    assert np.array_equal(rgb[::-1], x)   # the same figures, channels reversed


def test_the_gpu_paths_normalise_reverses_the_channels_as_the_cpu_path_does():
    torch = pytest.importorskip("torch")
    from calib.data.gpu_decode import normalise_rows

    pre = normalised(get_preset("letterbox", 8), mean="0.485,0.456,0.406", std="0.229,0.224,0.225",
                     channel_order="bgr")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    on_torch = normalise_rows(torch.from_numpy(np.array(pre.pixels(image)[None])), pre)[0].numpy()
    assert np.array_equal(on_torch, pre(image))


def test_defaults_change_nothing_and_imagenets_values_are_the_torchvision_preset():
    base = get_preset("torchvision", 224)
    assert normalised(base) is base
    assert set(base.params) == {"name", "size", "crop", "mean", "std", "interpolation", "crop_padding", "resize_to"}
    same = normalised(base, mean="0.485,0.456,0.406", std=(0.229, 0.224, 0.225), channel_order="rgb")
    assert same.params == base.params   # the same figures: the same cache key
    lite = get_preset("efficientnet-lite", 224)
    changed = normalised(lite, mean="0.5,0.5,0.5")
    assert changed.params["mean"] == [127.5] * 3 and changed.params["std"] == lite.params["std"]
    bgr = normalised(lite, channel_order="bgr")
    assert bgr.params == {**lite.params, "channel_order": "bgr"}


@pytest.mark.parametrize("option, value, words", [
    ("--mean", "0.5,0.5", "three numbers"),
    ("--mean", "a,b,c", "three numbers"),
    ("--mean", "0.5,nan,0.5", "three numbers"),
    ("--std", "0.2,0,0.2", "above 0"),
    ("--mean", "123.675,116.28,103.53", "divide 0-255 values by 255"),
    ("--std", "58.395,57.12,57.375", "divide 0-255 values by 255"),
])
def test_bad_values_are_one_line(option, value, words):
    with pytest.raises(CalibError, match=words) as info:
        parse_channels(value, option)
    assert "\n" not in str(info.value) and option in str(info.value)
    with pytest.raises(CalibError, match="--channel-order"):
        normalised(get_preset("letterbox", 8), channel_order="rbg")


def test_a_changed_normalisation_never_reuses_a_cache(tmp_path, tiny_classifier):
    """The preset's params are the cache key's `preprocess`: another mean, std or channel order is
    another key, and leaving the options out finds the first cache again."""
    from calib.commands.calibrate import calibrate_only
    from calib.session.config import RunConfig

    def calibrate(**kw):
        config = RunConfig(model=str(tiny_classifier), samples=4, cache_dir=str(tmp_path / "caches"), workers=0,
                           progress=False, **kw)
        return calibrate_only(config)[0]

    first = calibrate()
    assert "channel_order" not in first.entry.metadata.key.preprocess
    for kw in ({"mean": "0.5,0.5,0.5"}, {"std": "0.5,0.5,0.5"}, {"channel_order": "bgr"}):
        other = calibrate(**kw)
        assert not other.reused and other.entry.path != first.entry.path, kw
    bgr = calibrate(channel_order="bgr")
    assert bgr.reused and bgr.entry.metadata.key.preprocess["channel_order"] == "bgr"
    again = calibrate()
    assert again.reused and again.entry.path == first.entry.path
