"""calib.backends.tensorrt.runner: the logits returned are the ones the engine wrote.

The stand-in engine (trt_fakes.FakeTrt) reads its input from the address the runner bound and
writes known logits to the output address; the runner must hand those back, not zeros, not a
stale or unbound buffer. On CPU through host memory (`HostIO`); marked `gpu`, through the real
CUDA I/O (torch CUDA tensors, a side stream), which needs an NVIDIA GPU but no TensorRT.
"""

from __future__ import annotations

import numpy as np
import pytest
from trt_fakes import FakeTrt, HostIO, expected_logits

from calib.backends.tensorrt.runner import CudaIO, TrtRunner
from calib.errors import CalibError

ENGINE = b"ENGINE:"


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 4, 4)).astype(np.float32)


def test_runner_returns_what_the_engine_wrote():
    import torch

    fake, io = FakeTrt(), HostIO()
    runner = TrtRunner(fake, ENGINE, "fake.engine", io=io)
    assert runner.input_shape == (3, 4, 4) and runner.batch_range == (1, 8)
    x = _images(5)
    got = runner.run(x)
    assert got.shape == (5, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected_logits(x), rtol=1e-5)
    assert not np.allclose(got, 0)
    # A second batch of another size: the output buffer follows the shape; the first result stays.
    y = _images(2, seed=1)
    np.testing.assert_allclose(runner.run(y), expected_logits(y), rtol=1e-5)
    np.testing.assert_allclose(got, expected_logits(x), rtol=1e-5)
    np.testing.assert_allclose(runner.run(torch.from_numpy(x)), expected_logits(x), rtol=1e-5)
    assert fake.calls["executed"] == 3 and io.synchronized >= 3   # waited for every execution
    runner.close()
    assert runner.context is None and runner.engine is None


def test_batch_outside_the_profile_is_refused():
    fake = FakeTrt()
    runner = TrtRunner(fake, ENGINE, io=HostIO())
    for n in (9, 0):
        with pytest.raises(CalibError, match=r"outside this engine's batch range 1\.\.8"):
            runner.run(np.zeros((n, 3, 4, 4), np.float32))
    assert "executed" not in fake.calls


def test_unloadable_engine_is_one_line():
    with pytest.raises(CalibError) as info:
        TrtRunner(FakeTrt(), b"garbage", "bad.engine", io=HostIO())
    assert str(info.value) == "TensorRT could not load bad.engine: engine plan file is corrupted"


@pytest.mark.gpu
def test_cuda_io_returns_what_the_engine_wrote_on_the_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA")
    fake = FakeTrt(memory="cuda")
    runner = TrtRunner(fake, ENGINE, "fake.engine", io=CudaIO("cuda"))
    try:
        for seed, n in ((0, 8), (1, 3), (2, 8)):
            x = _images(n, seed)
            got = runner.run(x)
            np.testing.assert_allclose(got, expected_logits(x), rtol=1e-5)
        x = torch.from_numpy(_images(4, 3)).cuda()
        got = runner.run(x)   # device in, device out: the runner contract
        assert got.is_cuda
        np.testing.assert_allclose(got.float().cpu().numpy(), expected_logits(x.cpu().numpy()), rtol=1e-5)
    finally:
        runner.close()
