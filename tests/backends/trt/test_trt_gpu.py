"""calib.backends.tensorrt.gpu: which GPU is here, and whether each product can run engines on it."""

from __future__ import annotations

import pytest

from calib.backends.tensorrt.gpu import Gpu, find_gpu, rtx_run_problem, sm_text, tensorrt_run_problem

RTX_TARGETS = (75, 80, 86, 89, 120, 121)


def test_gpu_numbers():
    assert Gpu("NVIDIA GeForce RTX 4090", (8, 9)).sm == 89
    assert Gpu("NVIDIA GeForce RTX 5090", (12, 0)).sm == 120
    assert sm_text(120) == "12.0" and sm_text(86) == "8.6"
    assert Gpu("NVIDIA H200", (9, 0)).label == "NVIDIA H200 (compute capability 9.0)"


def test_no_gpu_is_one_line_for_both_products():
    none = "PyTorch 2.x sees no CUDA GPU here"
    trt = tensorrt_run_problem(none, "TensorRT")
    rtx = rtx_run_problem(none, "TensorRT-RTX", RTX_TARGETS)
    for message in (trt, rtx):
        assert message and "\n" not in message and none in message
    assert "--backend ort" in trt
    assert "8.6" in rtx and "calib build --backend tensorrt-rtx" in rtx


def test_rtx_does_not_run_on_hopper():
    h200 = Gpu("NVIDIA H200", (9, 0))
    assert tensorrt_run_problem(h200, "TensorRT") is None
    message = rtx_run_problem(h200, "TensorRT-RTX", RTX_TARGETS)
    assert "does not run on NVIDIA H200 (compute capability 9.0)" in message and "\n" not in message
    assert rtx_run_problem(Gpu("NVIDIA GeForce RTX 4090", (8, 9)), "TensorRT-RTX", RTX_TARGETS) is None


def test_find_gpu_here():
    torch = pytest.importorskip("torch")
    found = find_gpu()
    if torch.cuda.is_available():
        assert isinstance(found, Gpu) and found.capability == tuple(torch.cuda.get_device_capability())
    else:
        assert isinstance(found, str) and torch.__version__ in found
    assert "not 'cpu'" in find_gpu("cpu") or not torch.cuda.is_available()
