"""Pillow's resize arithmetic (calib.data.resize_plan): the CPU path's crop, Pillow's weights and
pass order, all in numpy, importable without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from calib.data.resize_plan import AxisPlan, axis_weights, crop_plan, image_plan, plan_tables, vertical_first
from calib.data.transforms import get_preset

SIZES = [(250, 340), (340, 250), (500, 375), (375, 500), (224, 224), (100, 100), (1000, 700), (257, 256),
         (256, 1024), (97, 300)]


@pytest.mark.parametrize("preset", ["efficientnet-lite", "torchvision"])
@pytest.mark.parametrize("w, h", SIZES)
def test_crop_plan_is_the_cpu_arithmetic(preset, w, h):
    pre = get_preset(preset)
    px, py = crop_plan(pre, w, h)
    s = pre.size
    if pre.crop == "padded":
        side = int(s / (s + pre.crop_padding) * min(w, h))
        assert (px.in0, py.in0) == ((w - side + 1) // 2, (h - side + 1) // 2)
        assert px.in1 - px.in0 == py.in1 - py.in0 == side
        assert (px.out_size, px.keep, px.count) == (s, 0, s)
    else:
        scale = pre.resize_to / min(w, h)
        assert (px.out_size, py.out_size) == (max(s, round(w * scale)), max(s, round(h * scale)))
        assert (px.in0, px.in1, py.in0, py.in1) == (0, w, 0, h)
        assert (px.keep, py.keep) == ((px.out_size - s) // 2, (py.out_size - s) // 2)
        assert px.count == py.count == s


def test_axis_weights_rows_sum_to_one_in_fixed_point():
    for plan in (AxisPlan(500, 0, 500, 224, 0, 224), AxisPlan(100, 0, 100, 224, 0, 224),
                 AxisPlan(340, 61, 279, 224, 0, 224)):
        for interp in ("bicubic", "bilinear"):
            first, dense = axis_weights(plan, interp)
            assert first >= 0 and first + dense.shape[1] <= plan.in_size
            sums = dense.sum(axis=1)
            assert np.all(np.abs(sums - (1 << 22)) <= dense.shape[1])  # rounding of each weight


def test_plans_reproduce_pillow_on_one_channel():
    """The tables, applied with numpy integer sums in Pillow's pass order, give Pillow's pixels."""
    pre = get_preset("efficientnet-lite", 32)
    rng = np.random.default_rng(0)
    for w, h in [(20, 150), (150, 20), (40, 44), (64, 48)]:
        pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        plan = image_plan(pre, w, h)
        table, kx, ky = plan_tables([plan], pre.size)
        crop = pixels[plan.y0:plan.y0 + plan.sy, plan.x0:plan.x0 + plan.sx].astype(np.int64)
        wx = np.zeros((pre.size, plan.sx), np.int64)
        wy = np.zeros((pre.size, plan.sy), np.int64)
        for j in range(pre.size):
            wx[j, table[0, j, 0]:table[0, j, 0] + kx] = table[0, j, 2:2 + kx][:plan.sx - table[0, j, 0]]
            wy[j, table[0, j, 1]:table[0, j, 1] + ky] = table[0, j, 2 + kx:][:plan.sy - table[0, j, 1]]

        def rnd(v):
            return np.clip((v + (1 << 21)) >> 22, 0, 255)

        got = rnd(rnd(wy @ crop) @ wx.T) if plan.v_first else rnd(wy @ rnd(crop @ wx.T))
        px, py = crop_plan(pre, w, h)
        assert plan.v_first == vertical_first(px, py)
        ref = np.asarray(Image.fromarray(pixels, "L").resize((pre.size, pre.size), Image.Resampling.BICUBIC,
                                                             box=(px.in0, py.in0, px.in1, py.in1)))
        np.testing.assert_array_equal(got, ref)


def test_imports_no_torch():
    code = "import sys, calib.data.resize_plan; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
