"""Evaluate ONNX models on a backend: turn each into the backend's artifact (ONNX Runtime runs
the ONNX file itself; TensorRT builds an engine), run them all on each decoded batch (one decode
for every model), release them."""

from __future__ import annotations

from pathlib import Path

from calib.backends import Backend
from calib.data import Dataset
from calib.errors import CalibError
from calib.evaluate.accuracy import Evaluation, evaluate


def evaluate_models(backend: Backend, models: dict[str, Path], dataset: Dataset, stage: Path,
                    batch_size: int = 32, workers: int | None = None, progress: bool = True,
                    stems: dict[str, str] | None = None,
                    devices: tuple[str, ...] = ("cpu",), gpu_decode: str = "nvjpeg") -> tuple[Evaluation, dict[str, Path]]:
    """Returns the evaluation and the artifact paths, keyed like `models`; engines are built in
    `stage`, named by `stems` (default: the key). On GPU `devices` (ONNX Runtime's CUDA provider)
    the images are decoded on the GPU once per batch and every model runs on that batch
    (calib.distributed)."""
    if tuple(devices) != ("cpu",):
        return (_evaluate_on_gpus(models, dataset, batch_size, progress, devices, gpu_decode, workers),
                {n: Path(p) for n, p in models.items()})
    suffix = backend.artifact_suffix()
    artifacts = {}
    for name, path in models.items():
        if suffix == ".onnx":
            artifacts[name] = Path(path)
        else:
            stem = (stems or {}).get(name, name)
            artifacts[name] = backend.build(path, stage / f"{stem}{suffix}", "fp32" if name == "fp32" else "int8")
    runners = {}
    try:
        for name, artifact in artifacts.items():
            runners[name] = backend.load(artifact)
        ev = evaluate(runners, dataset, batch_size, workers, progress="evaluating" if progress else None)
    finally:
        for r in runners.values():
            r.close()
    if not ev.keys:
        raise CalibError("no evaluation image could be decoded")
    return ev, artifacts


def _evaluate_on_gpus(models: dict[str, Path], dataset: Dataset, batch_size: int, progress: bool,
                      devices: tuple[str, ...], gpu_decode: str = "nvjpeg", workers: int | None = None) -> Evaluation:
    from calib.distributed import evaluate_device, evaluate_multi, load_runners

    if len(devices) > 1:
        ev, _, _ = evaluate_multi({n: str(p) for n, p in models.items()}, dataset, list(devices), batch_size, gpu_decode,
                                  workers=workers)
    else:
        runners = load_runners(models, devices[0])
        try:
            ev = evaluate_device(runners, dataset, batch_size, devices[0], gpu_decode,
                                 progress="evaluating" if progress else None, workers=workers).evaluation
        finally:
            for r in runners.values():
                r.close()
    if not ev.keys:
        raise CalibError("no evaluation image could be decoded")
    return ev
