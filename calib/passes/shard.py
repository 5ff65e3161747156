"""Several GPUs: one process per GPU runs the same pass on its share of the batches; results merge
exactly. The one wrapper around the walk for more than one device.

Sharding is by whole batches, dealt round-robin (batch i to GPU i mod n): every batch holds
exactly the images it holds on one GPU, so each GPU computes the same activations for it as a
single GPU would (same shapes, cuDNN algorithms chosen by heuristic, TF32 off: see
`calib.backends.ort`). Merging is then exact:

- `TensorStatistics.merge` adds integer bin counts over power-of-two-aligned bins and takes
  min/max, so the merged histogram is the one-GPU histogram bit for bit, whatever the order;
- channel means (float sums) are replayed batch by batch in global batch order
  (`ChannelMeans.replay`), so the additions happen in the one-GPU order too;
- predictions are put back in dataset order.

So the cache and its sidecar are bit-identical to one GPU's (except the timing). Each GPU's
process decodes its own batches and runs its own ONNX Runtime sessions: no tensor has to cross
between GPUs, only the statistics (a few MB) and the top-5 indices, which come back through a
multiprocessing queue. Processes are started with "spawn": CUDA cannot be used in a forked child.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from calib.data import Dataset
from calib.errors import CalibError
from calib.placement import Placement


def shard_batches(count: int, batch_size: int, world: int) -> list[list[int]]:
    """Batch indices per rank: batch i (images [i*bs, (i+1)*bs)) goes to rank i mod world."""
    if batch_size < 1 or world < 1:
        raise CalibError(f"batch size and GPU count must be at least 1 (got {batch_size}, {world})")
    batches = (count + batch_size - 1) // batch_size
    return [list(range(rank, batches, world)) for rank in range(world)]


def shard_dataset(dataset: Dataset, batch_size: int, batches: list[int]) -> Dataset:
    """The samples of `batches`, in order: chunking it by `batch_size` gives those batches back
    (only the dataset's last batch can be short, and it is then this shard's last too)."""
    samples = []
    for b in batches:
        samples.extend(dataset.samples[b * batch_size:(b + 1) * batch_size])
    return dataset.subset(samples)


@dataclass
class MultiResult:
    seconds: float            # all ranks loaded -> last result back
    rank_seconds: list[float]
    images: int
    skipped: list[str]


def _gpu_workers(gpus: int, workers: int | None = None) -> int:
    """Pillow decode processes per rank (decoder "pil"): `workers` as asked, else each GPU's
    share of the cores."""
    from calib.data.host_decode import default_gpu_workers

    return workers if workers is not None else default_gpu_workers(share=gpus)


# --------------------------------------------------------------------------- one rank
def _evaluate_rank(device: str, task: dict, barrier) -> dict:
    from calib.backends.ort import OrtRunner
    from calib.passes.evaluation import evaluate

    runners = {name: OrtRunner(m if isinstance(m, bytes) else str(m), device=device)
               for name, m in task["models"].items()}
    try:
        _warm(runners, task["dataset"], device, task["pad_to"])
        barrier.wait()
        ev, diffs = evaluate(runners, task["dataset"], task["batch_size"], device, task["decoder"], task["workers"],
                             None, pad_to=task["pad_to"], concurrent=task.get("concurrent", True))
    finally:
        for r in runners.values():
            r.close()
    return {"keys": ev.keys, "skipped": ev.skipped, "top5": {n: p.top5 for n, p in ev.predictions.items()},
            "labels": next(iter(ev.predictions.values())).labels if ev.predictions else None,
            "seconds": ev.seconds, "diffs": diffs, "signal": ev.signal, "noise": ev.noise}


def _collect_rank(device: str, task: dict, barrier) -> dict:
    import onnx

    from calib.calibrators.channel_means import ChannelMeans, Observers
    from calib.calibrators.statistics import TensorStatistics
    from calib.passes.calibration import exposed_runner, observe_pass

    model = onnx.load_from_string(task["model"])
    runner = exposed_runner(model, task["tensors"], device)
    stats = TensorStatistics(histogram=task["histogram"], bins=task["bins"])
    means = ChannelMeans(task["means_tensors"], log=True)
    barrier.wait()
    result = observe_pass(model, task["dataset"], Observers(stats, means), task["batch_size"], device,
                          task["tensors"], task["workers"], None, task["decoder"], runner=runner)
    return {"stats": stats.state_dict(), "log": means.log, "images": result.images,
            "skipped": result.skipped, "seconds": result.seconds, "tensors": result.tensors}


_RANK_WORK = {"evaluate": _evaluate_rank, "collect": _collect_rank}


def _worker(rank: int, device: str, task: dict, results) -> None:
    """One GPU's share: load, wait for everyone (barrier), work, send back the result."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    try:
        import torch

        torch.cuda.set_device(device)
        payload = _RANK_WORK[task["kind"]](device, task, task["barrier"])
        results.put((rank, payload, None))
    except BaseException as e:  # the parent raises it as one line
        try:
            task["barrier"].abort()   # nobody waits for a rank that will never arrive
        except Exception:
            pass
        results.put((rank, None, f"{type(e).__name__}: {e}"))


def _warm(runners: dict, dataset: Dataset, device: str, batch: int) -> None:
    """One run per model at the one batch shape the evaluation runs (`padded_batch`): cuDNN/cuBLAS
    set-up and the output buffers stay out of the timing, as they do for a single GPU whose
    models have already run that shape."""
    import torch

    size = dataset.preprocess.size
    x = torch.zeros((batch, 3, size, size), dtype=torch.float32, device=device)
    for r in runners.values():
        r.infer(x)


def _run_ranks(devices: list[str], tasks: list[dict]) -> tuple[list[dict], float]:
    import multiprocessing as mp
    import threading

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(len(devices) + 1)
    procs = []
    for rank, (device, task) in enumerate(zip(devices, tasks)):
        p = ctx.Process(target=_worker, args=(rank, device, dict(task, barrier=barrier), results), daemon=True)
        p.start()
        procs.append(p)
    try:
        try:
            barrier.wait(timeout=900)   # every rank has loaded its models
        except threading.BrokenBarrierError:
            pass                        # a rank failed: its error is in the queue
        start = time.perf_counter()
        out: list = [None] * len(devices)
        for _ in devices:
            rank, payload, error = results.get(timeout=1800)
            if error is not None:
                raise CalibError(f"GPU {devices[rank]} failed: {error}")
            out[rank] = payload
        seconds = time.perf_counter() - start
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return out, seconds


# --------------------------------------------------------------------------- the merges
def evaluate_sharded(models: dict[str, str | bytes], dataset: Dataset, placement: Placement, batch_size: int = 256,
                     decoder: str = "nvjpeg", concurrent: bool = True, workers: int | None = None):
    """The evaluation pass over several GPUs; predictions back in dataset order.
    Returns (Evaluation, MultiResult, max |logit| differences over ranks)."""
    from calib.passes.evaluation import padded_batch
    from calib.stats.accuracy import Evaluation, Predictions

    devices = list(placement.devices)
    plan = shard_batches(len(dataset), batch_size, len(devices))
    tasks = [{"kind": "evaluate", "dataset": shard_dataset(dataset, batch_size, b), "models": models,
              "batch_size": batch_size, "pad_to": padded_batch(batch_size, len(dataset)), "decoder": decoder,
              "concurrent": concurrent, "workers": _gpu_workers(len(devices), workers)} for b in plan]
    out, seconds = _run_ranks(devices, tasks)
    position = {s.key: i for i, s in enumerate(dataset.samples)}
    keys = [k for o in out for k in o["keys"]]
    order = np.argsort([position[k] for k in keys], kind="stable")
    labels = np.concatenate([o["labels"] for o in out])[order]
    names = list(models)
    preds = {n: Predictions(labels, np.concatenate([o["top5"][n] for o in out])[order]) for n in names}
    skipped = [k for o in out for k in o["skipped"]]
    diffs = {p: max(o["diffs"][p] for o in out) for p in out[0]["diffs"]}
    signal, noise = None, {}
    if all(o.get("signal") is not None for o in out):  # per-image logits powers, back in dataset order
        signal = np.concatenate([o["signal"] for o in out])[order]
        noise = {n: np.concatenate([o["noise"][n] for o in out])[order] for n in out[0]["noise"]}
    evaluation = Evaluation([keys[i] for i in order], skipped, preds, signal, noise, seconds)
    return evaluation, MultiResult(seconds, [o["seconds"] for o in out], len(keys), skipped), diffs


def observe_sharded(model, dataset: Dataset, placement: Placement, batch_size: int = 64,
                    tensors: list[str] | None = None, means_tensors: list[str] | None = None,
                    histogram: bool = True, bins: int = 4096, decoder: str = "nvjpeg", workers: int | None = None):
    """The calibration pass over several GPUs, merged exactly.
    Returns (TensorStatistics, ChannelMeans, MultiResult, tensor order)."""
    from calib.calibrators.channel_means import ChannelMeans
    from calib.calibrators.statistics import TensorStatistics

    devices = list(placement.devices)
    blob = model.SerializeToString()
    plan = shard_batches(len(dataset), batch_size, len(devices))
    tasks = [{"kind": "collect", "dataset": shard_dataset(dataset, batch_size, b), "model": blob,
              "tensors": tensors, "means_tensors": means_tensors, "histogram": histogram, "bins": bins,
              "batch_size": batch_size, "decoder": decoder,
              "workers": _gpu_workers(len(devices), workers)} for b in plan]
    out, seconds = _run_ranks(devices, tasks)
    stats = TensorStatistics(histogram=histogram, bins=bins)
    for o in out:
        stats.merge(TensorStatistics.from_state_dict(o["stats"]))
    means = ChannelMeans(means_tensors)
    means.replay([o["log"] for o in out], plan)
    images = sum(o["images"] for o in out)
    skipped = [k for o in out for k in o["skipped"]]
    return stats, means, MultiResult(seconds, [o["seconds"] for o in out], images, skipped), out[0]["tensors"]
