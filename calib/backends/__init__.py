"""Backends: ONNX Runtime (CPU, the default), TensorRT and TensorRT-RTX (optional), and plug-ins.

Chosen by name from one registry (`registry.py`); nothing here imports TensorRT.
"""

from __future__ import annotations

from calib.backends.base import Backend, Runner, Timing, time_runner
from calib.backends.registry import BUILTINS, backend_class, backend_names, get_backend, register

BACKENDS = BUILTINS  # the built-in names: ("ort", "tensorrt", "tensorrt-rtx")

__all__ = ["BACKENDS", "Backend", "Runner", "Timing", "backend_class", "backend_names", "get_backend",
           "register", "time_runner"]
