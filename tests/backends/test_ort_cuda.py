"""OrtRunner on ONNX Runtime's CUDA provider: the one-line errors when CUDA
cannot load, output shapes for IOBinding, and (on a GPU with onnxruntime-gpu) device runs that
match the CPU provider."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import has_cuda_ort

from calib.backends.ort import OrtRunner, output_shapes
from calib.errors import CalibError, MissingDependency
from calib.onnx_io import cuda_provider_available


gpu = pytest.mark.skipif(not has_cuda_ort(), reason="needs an NVIDIA GPU with CUDA and onnxruntime-gpu")


def test_a_runner_runs_on_one_device(tiny_classifier):
    with pytest.raises(CalibError, match="one device"):
        OrtRunner(tiny_classifier, device="cuda:0,1")
    with pytest.raises(CalibError, match="unknown device"):
        OrtRunner(tiny_classifier, device="gpu")


def test_cpu_runner_is_unchanged(tiny_classifier):
    from calib.onnx_io import ort_session

    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16), dtype=np.float32)
    runner = OrtRunner(tiny_classifier)
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    ref = ort_session(tiny_classifier, "all").run(None, {"input": x})[0]
    np.testing.assert_array_equal(runner.run(x), ref)
    torch = pytest.importorskip("torch")
    with pytest.raises(CalibError, match="CUDA device"):
        runner._infer_device({"input": torch.zeros(1)}, None)
    # Host arrays in, host arrays out; named inputs and chosen outputs are the same run.
    np.testing.assert_array_equal(runner.infer({"input": x}, ["logits"])[0], ref)


@pytest.mark.skipif(cuda_provider_available(), reason="this onnxruntime has a CUDA provider")
def test_missing_cuda_provider_is_a_one_line_install_hint(tiny_classifier):
    with pytest.raises(MissingDependency) as info:
        OrtRunner(tiny_classifier, device="cuda")
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'calib[gpu]'" in message and "must never share an environment" in message


def test_output_shapes_take_the_batch(tiny_classifier):
    import torch

    from calib.onnx_io import ort_session

    shapes = output_shapes(ort_session(tiny_classifier), {"input": (5, 3, 16, 16)})
    assert shapes["logits"] == ([5, 1000], torch.float32)


@gpu
@pytest.mark.gpu
def test_cuda_runner_matches_cpu(tiny_classifier):
    import torch

    x = np.random.default_rng(1).standard_normal((7, 3, 16, 16), dtype=np.float32)
    cpu = OrtRunner(tiny_classifier).run(x)
    runner = OrtRunner(tiny_classifier, device="cuda:0")
    assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
    assert runner.stream is not None   # its own stream (torch is here): infer waits for it only
    np.testing.assert_allclose(runner.run(x), cpu, rtol=1e-4, atol=1e-4)
    (logits,) = runner.infer(torch.from_numpy(x).cuda())
    assert logits.is_cuda and tuple(logits.shape) == (7, 1000)
    np.testing.assert_allclose(logits.cpu().numpy(), cpu, rtol=1e-4, atol=1e-4)
    # A second shape (a short last batch) gets its own buffers.
    (short,) = runner.infer(torch.from_numpy(x[:2]).cuda())
    np.testing.assert_allclose(short.cpu().numpy(), cpu[:2], rtol=1e-4, atol=1e-4)
    host = runner.infer(torch.from_numpy(x))[0]   # a host tensor is a host run
    assert isinstance(host, np.ndarray)


@gpu
@pytest.mark.gpu
def test_cuda_runs_are_deterministic(tiny_classifier):
    import torch

    x = torch.randn((16, 3, 16, 16), device="cuda:0")
    runner = OrtRunner(tiny_classifier, device="cuda:0")
    a = runner.infer(x)[0].clone()
    b = runner.infer(x)[0].clone()
    assert torch.equal(a, b)


@gpu
@pytest.mark.gpu
def test_int8_logits_on_cuda_equal_the_cpu_bit_for_bit(tiny_classifier, tmp_path):
    """The integer-exact graph: the same INT8 bits on both providers (run as written they differ)."""
    import onnx

    from calib.quantize import quantize_model
    from tests.quantize.quantize_helpers import ranges

    model = onnx.load(str(tiny_classifier))
    x = np.random.default_rng(3).standard_normal((16, 3, 16, 16)).astype(np.float32)
    qdq, _ = quantize_model(model, ranges(model, {"input": x}), "tensorrt")
    path = tmp_path / "int8.onnx"
    onnx.save(qdq, path)
    cpu, gpu_runner = OrtRunner(path), OrtRunner(path, device="cuda:0")
    assert cpu.exact is not None and gpu_runner.exact is not None
    assert np.array_equal(cpu.run(x), gpu_runner.run(x))


@gpu
@pytest.mark.gpu
def test_build_checks_the_model_on_the_gpu(tiny_classifier, tmp_path):
    from tests.test_cli import calib

    calib("calibrate", "--model", tiny_classifier, "--samples", 8,
          "--cache-dir", tmp_path / "caches")
    cache = next((tmp_path / "caches").glob("*.cache"))
    proc = calib("build", "--model", tiny_classifier, "--cache", cache, "--out", tmp_path / "int8.onnx",
                 "--device", "cuda")
    assert "runs in ONNX Runtime's CUDA provider on cuda:0" in proc.stderr
