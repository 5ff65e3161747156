"""The backend interface shared by ONNX Runtime and the TensorRT family: build, load, run, time.

A backend turns an ONNX model into its artifact (`build`), loads an artifact into a `Runner`
(`load`), names the Q/DQ flavor it builds from (`qdq_flavor`) and says whether it can execute
engines on this machine (`can_run`), so that a command can refuse in one line before it
calibrates anything.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np


class Runner(ABC):
    """A loaded model or engine: named inputs in, outputs out, on host or device arrays.

    One contract for every backend and device (as ONNX Runtime's calibration tools and ModelOpt
    hand an execution provider to one session factory): `infer` takes numpy arrays (host) or
    torch tensors on the runner's GPU (device) and returns its outputs on the same side. A
    runner on a GPU may reuse its output buffers from one call to the next (clone to keep them);
    on the host the arrays returned are the caller's."""

    @abstractmethod
    def infer(self, feed: Any, outputs: Sequence[str] | None = None) -> list:
        """The outputs `outputs` (default: the model's own, in order) for `feed`: one array for
        the model's first input, or a mapping input name -> array."""

    def run(self, images: Any) -> Any:
        """The first output for one batch of the first input (logits, for a classifier)."""
        return self.infer(images)[0]

    def close(self) -> None:
        """Release device resources."""


# What TensorRT users name engine files (trtexec's --saveEngine examples use all three): bench
# loads these as engines, and a build writing an engine takes any of them for --out.
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class Backend(ABC):
    name: ClassVar[str]          # the registry name (`--backend NAME`)
    qdq_flavor: ClassVar[str]    # the Q/DQ flavor this backend builds INT8 models from

    @abstractmethod
    def build(self, onnx_path: Path, out: Path, precision: str = "fp32", **options) -> Path:
        """Turn an ONNX model (FP32, or Q/DQ for precision='int8') into this backend's
        artifact at `out` (a copy of the ONNX file for ONNX Runtime, an engine for TensorRT)."""

    @abstractmethod
    def load(self, artifact: Path, device: str | None = None) -> Runner:
        """A runner of `artifact` on `device` (None: the backend's own default device)."""

    def load_for_timing(self, artifact: Path, device: str | None = None) -> Runner:
        """The artifact as it deploys, for speed figures (`load` unless a backend evaluates
        something else than it deploys: ONNX Runtime's integer-exact graphs)."""
        return self.load(artifact, device)

    def artifact_suffix(self) -> str:
        return ".onnx"

    def can_run(self) -> tuple[bool, str]:
        """(True, "") when artifacts can be executed here, else (False, one line saying why)."""
        return True, ""


@dataclass
class Timing:
    batch_size: int
    iterations: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    throughput: float  # images per second

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def time_runner(runner: Runner, shape: Any, batch_size: int, seconds: float = 2.0,
                warmup: int = 3, min_iterations: int = 5, seed: int = 0) -> Timing:
    """Latency percentiles and throughput on random input of one batch size (not on zeros:
    some kernels run faster on them). `shape`: (C, H, W) of an image input, or a model's named
    inputs (calib.data.arrays.ArrayFeed: random floats, zeros in the integer inputs, which are
    token ids, indices and masks)."""
    rng = np.random.default_rng(seed)
    if hasattr(shape, "inputs"):
        x = {i.name: rng.standard_normal((batch_size, *i.shape)).astype(i.dtype) if np.dtype(i.dtype).kind == "f"
             else np.zeros((batch_size, *i.shape), i.dtype) for i in shape.inputs}
        call = runner.infer
    else:
        x = rng.standard_normal((batch_size, *shape), dtype=np.float32)
        call = runner.run
    for _ in range(warmup):
        call(x)
    latencies = []
    start = time.perf_counter()
    while len(latencies) < min_iterations or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call(x)
        latencies.append(time.perf_counter() - t)
    lat = np.asarray(latencies) * 1e3
    return Timing(batch_size, len(lat), float(np.percentile(lat, 50)), float(np.percentile(lat, 90)),
                  float(np.percentile(lat, 99)), float(batch_size * len(lat) / (lat.sum() / 1e3)))
