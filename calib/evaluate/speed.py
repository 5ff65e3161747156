"""Speed of the FP32 and INT8 artifacts on the backend a run used: median latency of one image
(batch 1) and throughput at batch 32, on random input (speed, not accuracy). What a deployment
engineer weighs against the accuracy figures; `calib bench` gives the full table."""

from __future__ import annotations

from pathlib import Path

from calib.backends import Backend, time_runner


def measure_speed(backend: Backend, artifacts: dict[str, Path], shape: tuple[int, int, int],
                  seconds: float = 1.0, device: str = "cpu", progress: bool = True) -> dict[str, dict]:
    """{name: {"latency_ms_b1", "throughput_b32"}} for each artifact (one at a time, so they do
    not compete for the cores), on `device` (ONNX Runtime's CUDA provider for a GPU; host input,
    so the figures include the copies to and from the device). With `progress`, a bar counts
    the timings (two per artifact, `seconds` each): this phase printed nothing for several
    seconds at the end of a run."""
    from calib.progress import progress_bar

    out = {}
    bar = progress_bar(total=2 * len(artifacts), desc="timing speed", unit="timing", enabled=progress)
    try:
        for name, artifact in artifacts.items():
            runner = backend.load_for_timing(artifact, device)
            try:
                bar.set_postfix_str(f"{name} batch 1", refresh=False)
                b1 = time_runner(runner, shape, 1, seconds)
                bar.update(1)
                bar.set_postfix_str(f"{name} batch 32", refresh=False)
                b32 = time_runner(runner, shape, 32, seconds)
                bar.update(1)
            finally:
                runner.close()
            out[name] = {"latency_ms_b1": round(b1.latency_ms_p50, 3), "throughput_b32": round(b32.throughput, 1)}
    finally:
        bar.close()
    return out
