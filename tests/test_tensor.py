"""calib.tensor: each function gives the same answer for a numpy array and a torch tensor, so one
consumer serves the CPU and the GPU (where the torch branch runs on the device)."""

import numpy as np
import pytest

from calib import tensor

torch = pytest.importorskip("torch")


def _pair(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x, torch.from_numpy(x.copy())


def test_top5_agrees_and_handles_few_classes():
    for classes in (3, 5, 7, 1000):
        x, t = _pair((6, classes))
        np.testing.assert_array_equal(tensor.top5(x), tensor.top5(t).numpy())
    assert tensor.top5(np.array([[0.2, 0.5, 0.3]], np.float32)).tolist() == [[1, 2, 0]]


def test_powers_agree():
    (a, ta), (b, tb) = _pair((4, 9), 1), _pair((4, 9), 2)
    np.testing.assert_allclose(tensor.row_power(a), tensor.row_power(ta).numpy(), rtol=1e-12)
    np.testing.assert_allclose(tensor.row_error_power(a, b), tensor.row_error_power(ta, tb).numpy(), rtol=1e-12)
    assert tensor.row_power(a).dtype == np.float64
    assert float(tensor.max_abs_diff(a, b)) == pytest.approx(float(tensor.max_abs_diff(ta, tb)))
    assert tensor.stack_max([tensor.max_abs_diff(a, b), np.float32(0)]) == pytest.approx(np.abs(a - b).max())


def test_channel_sums_agree_and_skip_what_has_no_channels():
    x, t = _pair((3, 4, 5, 5))
    (s, n), (ts, tn) = tensor.channel_sums(x), tensor.channel_sums(t)
    np.testing.assert_allclose(s, ts, atol=1e-5)   # float32 sums, each library in its own order
    assert n == tn == 3 * 25 and s.dtype == ts.dtype == np.float64
    assert tensor.channel_sums(np.zeros(3, np.float32)) is None
    assert tensor.channel_sums(np.zeros((2, 3), np.int64)) is None
    assert tensor.channel_sums(torch.zeros((2, 3), dtype=torch.int64)) is None


def test_padding_rows_and_owned_copies():
    x, t = _pair((2, 3))
    px, pt = tensor.pad_rows(x, 5), tensor.pad_rows(t, 5)
    assert px.shape == (5, 3) and tuple(pt.shape) == (5, 3) and not px[2:].any() and not pt[2:].any()
    assert tensor.pad_rows(x, 2) is x
    kept = tensor.owned(t)
    t += 1   # a runner overwriting its buffer
    assert not torch.equal(kept, t)
    assert tensor.owned(x) is x   # host arrays a runner returned are the caller's already
    np.testing.assert_array_equal(tensor.to_numpy(tensor.concat([t, t])), np.concatenate([t.numpy()] * 2))
    assert tensor.is_torch(t) and not tensor.is_torch(x) and not tensor.on_device(t)
