"""The report's speed figures (calib.evaluate.speed): latency at batch 1, throughput at batch 32."""

import types
from pathlib import Path

import pytest

from calib.evaluate.speed import measure_speed


class _Clock:
    """A clock that only moves when the fake runner runs: timings without the machine's noise."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Runner:
    """Costs 1 ms per call plus 0.1 ms per image, and records the batch sizes it ran."""

    def __init__(self, clock: _Clock, log: list):
        self.clock, self.log = clock, log

    def run(self, x):
        self.log.append(x.shape[0])
        self.clock.now += 1e-3 + 1e-4 * x.shape[0]

    def close(self):
        pass


class _Backend:
    def __init__(self, clock: _Clock):
        self.clock, self.batches, self.devices = clock, {}, []

    def load_for_timing(self, artifact: Path, device: str = "cpu"):
        self.devices.append(device)
        return _Runner(self.clock, self.batches.setdefault(artifact.name, []))


def test_latency_is_timed_at_batch_1_and_throughput_at_batch_32(monkeypatch):
    """One image takes 1.1 ms (909 images/s); a batch of 32 takes 4.2 ms, 7,619 images/s."""
    clock = _Clock()
    monkeypatch.setattr("calib.backends.base.time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    backend = _Backend(clock)
    out = measure_speed(backend, {"fp32": Path("fp32.onnx"), "int8": Path("int8.onnx")}, (3, 8, 8), seconds=0.05)
    for name in ("fp32", "int8"):
        assert out[name]["latency_ms_b1"] == pytest.approx(1.1, abs=1e-3)
        assert out[name]["throughput_b32"] == pytest.approx(32 / 4.2e-3, abs=0.1)
        assert set(backend.batches[f"{name}.onnx"]) == {1, 32}
    assert backend.devices == ["cpu", "cpu"]


def test_the_speed_phase_shows_progress(monkeypatch, capsys):
    """It printed nothing for several seconds at the end of a run (issue 22, row 6)."""
    clock = _Clock()
    monkeypatch.setattr("calib.backends.base.time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    artifacts = {"fp32": Path("fp32.onnx"), "int8": Path("int8.onnx")}
    measure_speed(_Backend(clock), artifacts, (3, 8, 8), seconds=0.01)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("timing speed") for line in lines) and "4/4" in lines[-1]
    measure_speed(_Backend(clock), artifacts, (3, 8, 8), seconds=0.01, progress=False)
    assert capsys.readouterr().err == ""
