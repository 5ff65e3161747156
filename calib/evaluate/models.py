"""Evaluate ONNX models on a backend: turn each into the backend's artifact (ONNX Runtime runs
the ONNX file itself; TensorRT builds an engine), load each through the backend on the run's
device, run them all on each decoded batch (the evaluation pass, `calib.passes.evaluate`: one
decode for every model; on a GPU the batches are decoded there and fed to the runners as device
tensors, whatever the backend), release them. Several GPUs, or a torchrun job's processes, shard
ONNX Runtime's pass (`calib.passes.shard`)."""

from __future__ import annotations

from pathlib import Path

from calib.backends import Backend
from calib.data import Dataset
from calib.errors import CalibError
from calib.passes import evaluate
from calib.placement import CPU, Placement
from calib.stats.accuracy import Evaluation


def build_artifacts(backend: Backend, models: dict[str, Path], stage: Path,
                    stems: dict[str, str] | None = None) -> dict[str, Path]:
    """The backend's artifact of each model (the ONNX file itself for ONNX Runtime; engines are
    built in `stage`, named by `stems`, default: the key)."""
    suffix = backend.artifact_suffix()
    artifacts = {}
    for name, path in models.items():
        if suffix == ".onnx":
            artifacts[name] = Path(path)
        else:
            stem = (stems or {}).get(name, name)
            artifacts[name] = backend.build(path, stage / f"{stem}{suffix}", "fp32" if name == "fp32" else "int8")
    return artifacts


def evaluate_models(backend: Backend, models: dict[str, Path], dataset: Dataset, stage: Path,
                    batch_size: int = 32, workers: int | None = None, progress: bool = True,
                    stems: dict[str, str] | None = None, placement: Placement = CPU,
                    gpu_decode: str = "nvjpeg") -> tuple[Evaluation, dict[str, Path]]:
    """Returns the evaluation and the artifact paths, keyed like `models`."""
    artifacts = build_artifacts(backend, models, stage, stems)
    if placement.sharded:
        from calib.passes.shard import evaluate_sharded

        ev, _, _ = evaluate_sharded({n: str(p) for n, p in artifacts.items()}, dataset, placement, batch_size,
                                    gpu_decode, workers=workers)
    else:
        runners = {}
        try:
            for name, artifact in artifacts.items():
                runners[name] = backend.load(artifact, placement.first if placement.on_gpu else None)
            ev, _ = evaluate(runners, dataset, batch_size, placement.first, gpu_decode, workers,
                             "evaluating" if progress else None)
        finally:
            for r in runners.values():
                r.close()
    if not ev.keys:
        raise CalibError("no evaluation image could be decoded")
    return ev, artifacts
