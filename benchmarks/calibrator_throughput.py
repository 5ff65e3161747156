"""Throughput of TensorStatistics.observe() and of compute(): `python benchmarks/calibrator_throughput.py`."""

from __future__ import annotations

import argparse
import time

import numpy as np

from calib.calibrators import get_calibrator
from calib.calibrators import TensorStatistics


def observe_rate(x: np.ndarray, histogram: bool = True, repeats: int = 3) -> float:
    """Best-of-`repeats` values per second for one observe() of `x` into fresh statistics."""
    TensorStatistics(histogram=histogram).observe("warm", x[: 1 << 16])
    best = float("inf")
    for _ in range(repeats):
        stats = TensorStatistics(histogram=histogram)
        start = time.perf_counter()
        stats.observe("x", x)
        best = min(best, time.perf_counter() - start)
    return x.size / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=16 * 1024 * 1024, help="values per array")
    parser.add_argument("--tensors", type=int, default=100, help="tensors for the compute() timing")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.size, dtype=np.float32)
    cases = {
        "float32 gaussian": x,
        "float32 relu (50% zeros)": np.maximum(x, 0),
        "float16 gaussian": x.astype(np.float16),
        "float64 gaussian": x.astype(np.float64),
    }
    for label, arr in cases.items():
        print(f"observe {label:26s} {observe_rate(arr) / 1e6:8.0f} M values/s")
    print(f"observe {'float32, histogram=False':26s} {observe_rate(x, histogram=False) / 1e6:8.0f} M values/s")
    stats = TensorStatistics()
    for i in range(args.tensors):
        stats.observe(f"t{i}", rng.standard_normal(8192).astype(np.float32) * (i + 1))
    for name in ("entropy", "mse", "percentile", "minmax"):
        cal = get_calibrator(name, stats)
        cal.compute()  # builds the data-independent caches
        start = time.perf_counter()
        cal.compute()
        print(f"compute {name:10s} {args.tensors} tensors: {time.perf_counter() - start:6.3f} s")


if __name__ == "__main__":
    main()
