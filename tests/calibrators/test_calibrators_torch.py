"""Torch inputs: CPU tensors match numpy exactly; device reduction matches numpy and stays on device."""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators import TensorStatistics, get_calibrator

from calibrators_helpers import gaussian_with_outliers

torch = pytest.importorskip("torch")

ALL = ("entropy", "minmax", "percentile", "mse")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def histograms_equal(a: TensorStatistics, b: TensorStatistics, name: str) -> bool:
    ha, hb = a.histogram(name), b.histogram(name)
    return np.array_equal(ha[0], hb[0]) and np.array_equal(ha[1], hb[1]) and a.summary(name) == b.summary(name)


def data(rng: np.random.Generator) -> np.ndarray:
    x = gaussian_with_outliers(rng, 4 * 3 * 32 * 32, outlier=15.0).reshape(4, 3, 32, 32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    return x


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_cpu_tensor_same_as_numpy(rng, dtype):
    x = data(rng)
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    # the numpy reference sees the same (rounded) values
    ref_values = t.float().numpy() if dtype == "bfloat16" else t.numpy()
    a, b, c = TensorStatistics(), TensorStatistics(), TensorStatistics()
    a.observe("x", t)
    b.observe("x", ref_values)
    c.observe_on_device("x", t)  # the device code path, run on the CPU
    assert histograms_equal(a, b, "x")
    assert histograms_equal(c, b, "x")
    assert a.summary("x").nonfinite == 3
    for name in ALL:
        assert get_calibrator(name, a).compute() == get_calibrator(name, b).compute()


def test_cpu_tensor_views_and_grad(rng):
    x = torch.from_numpy(data(rng)).requires_grad_(True)
    view = x.transpose(1, 3)[:, ::2]
    a, b = TensorStatistics(), TensorStatistics()
    a.observe("v", view)
    b.observe("v", view.detach().numpy().copy())
    assert histograms_equal(a, b, "v")
    c = TensorStatistics()
    c.observe_on_device("v", view)
    assert histograms_equal(c, b, "v")
    assert x.grad is None


def test_torch_integer_and_empty_tensors():
    s, r = TensorStatistics(), TensorStatistics()
    s.observe("i", torch.arange(-5, 6))
    r.observe("i", np.arange(-5, 6))
    assert histograms_equal(s, r, "i")
    s.observe("e", torch.zeros(0))
    s.observe_on_device("e2", torch.zeros(0, 3))
    assert s.summary("e").count == 0 and s.summary("e2").count == 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_tensor_same_as_numpy(rng, dtype, monkeypatch):
    x = data(rng)
    host = torch.from_numpy(x).to(getattr(torch, dtype))
    dev = host.cuda()
    # Record every device->host copy: only scalars and the bin counts may come back.
    copied: list[int] = []
    original = torch.Tensor.cpu

    def spy(self, *args, **kwargs):
        copied.append(self.numel())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", spy)
    s = TensorStatistics()
    s.observe("x", dev)
    s.observe("x", dev * 3)  # range growth on the device path
    monkeypatch.undo()
    assert copied and max(copied) <= s.bins < dev.numel()
    ref = TensorStatistics()
    values = host.float().numpy() if dtype == "bfloat16" else host.numpy()
    ref.observe("x", values)
    ref.observe("x", (host * 3).float().numpy() if dtype == "bfloat16" else (host * 3).numpy())
    assert histograms_equal(s, ref, "x")
    for name in ALL:
        assert get_calibrator(name, s).compute() == get_calibrator(name, ref).compute()
    # The state is plain host numpy: nothing in it refers to the device.
    state = s.state_dict()["tensors"]["x"]
    assert type(state["counts"]) is np.ndarray
    assert all(not isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.gpu
@needs_cuda
def test_cuda_large_tensor_and_merge_with_host_state(rng):
    x = rng.standard_normal(3_000_000).astype(np.float32)
    dev = torch.from_numpy(x).cuda()
    a, b = TensorStatistics(), TensorStatistics()
    a.observe("x", dev[: 1_000_000])
    b.observe("x", x[1_000_000:] * 50)
    a.merge(b)
    ref = TensorStatistics()
    ref.observe("x", np.concatenate([x[:1_000_000], x[1_000_000:] * 50]))
    assert histograms_equal(a, ref, "x")
