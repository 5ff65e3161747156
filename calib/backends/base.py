"""The backend interface shared by ONNX Runtime and TensorRT: build, save/load, run, time."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Runner(ABC):
    """A loaded model/engine that runs float32 NCHW batches and returns logits."""

    @abstractmethod
    def run(self, images: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release device resources."""


class Backend(ABC):
    name: str

    @abstractmethod
    def build(self, onnx_path: Path, out: Path, precision: str = "fp32", **options) -> Path:
        """Turn an ONNX model (FP32, or Q/DQ for precision='int8') into this backend's
        artifact at `out` (a copy of the ONNX file for ONNX Runtime, an engine for TensorRT)."""

    @abstractmethod
    def load(self, artifact: Path) -> Runner: ...

    def artifact_suffix(self) -> str:
        return ".onnx"


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


def time_runner(runner: Runner, shape: tuple[int, int, int], batch_size: int, seconds: float = 2.0,
                warmup: int = 3, min_iterations: int = 5, seed: int = 0) -> Timing:
    """Latency percentiles and throughput on random input of one batch size (not on zeros:
    some kernels run faster on them)."""
    x = np.random.default_rng(seed).standard_normal((batch_size, *shape), dtype=np.float32)
    for _ in range(warmup):
        runner.run(x)
    latencies = []
    start = time.perf_counter()
    while len(latencies) < min_iterations or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        runner.run(x)
        latencies.append(time.perf_counter() - t)
    lat = np.asarray(latencies) * 1e3
    return Timing(batch_size, len(lat), float(np.percentile(lat, 50)), float(np.percentile(lat, 90)),
                  float(np.percentile(lat, 99)), float(batch_size * len(lat) / (lat.sum() / 1e3)))
