"""Backends: ONNX Runtime (CPU, the default) and TensorRT (GPU, optional)."""

from __future__ import annotations

from calib.backends.base import Backend, Runner, Timing, time_runner
from calib.errors import CalibError

BACKENDS = ("ort", "tensorrt")


def get_backend(name: str) -> Backend:
    if name == "ort":
        from calib.backends.ort import OrtBackend

        return OrtBackend()
    if name == "tensorrt":
        from calib.backends.tensorrt import TensorRTBackend

        return TensorRTBackend()
    raise CalibError(f"unknown backend '{name}' (choose from: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Backend", "Runner", "Timing", "get_backend", "time_runner"]
