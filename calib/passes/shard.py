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
between GPUs, only the statistics (a few MB) and the top-5 indices.

One plan, one rank's work (`calib.passes.ranks`) and one merge (`merge_collect`,
`merge_evaluate`, handed the per-rank payloads in rank order); two transports carry the tasks
out and the results back:
- `Spawned`: several GPUs of this host (`--device cuda:0,1`), a process per GPU started here with
  multiprocessing ("spawn": CUDA cannot be used in a forked child), results back through a queue;
- `calib.passes.distributed.Group`: the processes of a torchrun job, any number of hosts, tasks
  and results through a torch.distributed process group (gloo); this process is its rank 0.
The single-host case keeps its multiprocessing transport: it is the path the two-GPU test ran,
and with no machine of several GPUs at hand a local process group could not be timed against it
(the payloads, so the merged results, are the same either way).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.data import Dataset
from calib.errors import CalibError
from calib.passes.ranks import RANK_WORK, decode_workers, use_device
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


def _worker(rank: int, device: str, task: dict, results) -> None:
    """One GPU's share: load, wait for everyone (barrier), work, send back the result."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    try:
        use_device(device)
        payload = RANK_WORK[task["kind"]](device, task, task["barrier"])
        results.put((rank, payload, None))
    except BaseException as e:  # the parent raises it as one line
        try:
            task["barrier"].abort()   # nobody waits for a rank that will never arrive
        except Exception:
            pass
        results.put((rank, None, f"{type(e).__name__}: {e}"))


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


# --------------------------------------------------------------------------- the transports
class Spawned:
    """Several devices of this host: a process per device, started here ("spawn"), results back
    through a multiprocessing queue (`_run_ranks`)."""

    shares_files = True   # every rank reads this host's files: models travel as paths

    def __init__(self, devices: tuple[str, ...] | list[str]):
        self.devices = tuple(devices)

    @property
    def ranks(self) -> int:
        return len(self.devices)

    def workers(self, workers: int | None) -> int:
        return decode_workers(workers, any(d != "cpu" for d in self.devices), len(self.devices))

    def run(self, kind: str, tasks: list[dict]) -> tuple[list[dict], float]:
        """Every rank's payload, in rank order, and the seconds from all loaded to the last back."""
        return _run_ranks(list(self.devices), [dict(t, kind=kind) for t in tasks])


def transport_for(placement: Placement):
    """How a pass on `placement` is shared out: the torchrun job's process group (`world` > 1:
    `calib.passes.distributed`), else a process per GPU of this host."""
    if placement.world > 1:
        from calib.passes.distributed import group

        return group(placement.on_gpu)
    return Spawned(placement.devices)


# --------------------------------------------------------------------------- the merges
def merge_evaluate(out: list[dict], dataset: Dataset, names: list[str], seconds: float):
    """The ranks' evaluations as one: predictions and logits powers back in dataset order.
    Returns (Evaluation, MultiResult, max |logit| differences over ranks)."""
    from calib.stats.accuracy import Evaluation, Predictions

    position = {s.key: i for i, s in enumerate(dataset.samples)}
    keys = [k for o in out for k in o["keys"]]
    order = np.argsort([position[k] for k in keys], kind="stable")
    labels = np.concatenate([o["labels"] for o in out])[order]
    preds = {n: Predictions(labels, np.concatenate([o["top5"][n] for o in out])[order]) for n in names}
    skipped = [k for o in out for k in o["skipped"]]
    diffs = {p: max(o["diffs"][p] for o in out) for p in out[0]["diffs"]}
    signal, noise = None, {}
    if all(o.get("signal") is not None for o in out):  # per-image logits powers, back in dataset order
        signal = np.concatenate([o["signal"] for o in out])[order]
        noise = {n: np.concatenate([o["noise"][n] for o in out])[order] for n in out[0]["noise"]}
    evaluation = Evaluation([keys[i] for i in order], skipped, preds, signal, noise, seconds)
    return evaluation, MultiResult(seconds, [o["seconds"] for o in out], len(keys), skipped), diffs


def merge_collect(out: list[dict], plan: list[list[int]], means_tensors: list[str] | None, histogram: bool,
                  bins: int, seconds: float):
    """The ranks' statistics as one pass's: `TensorStatistics.merge` (integer counts, exact in any
    order), channel means replayed in global batch order (`ChannelMeans.replay`).
    Returns (TensorStatistics, ChannelMeans, MultiResult, tensor order)."""
    from calib.calibrators.channel_means import ChannelMeans
    from calib.calibrators.statistics import TensorStatistics

    stats = TensorStatistics(histogram=histogram, bins=bins)
    for o in out:
        stats.merge(TensorStatistics.from_state_dict(o["stats"]))
    means = ChannelMeans(means_tensors)
    means.replay([o["log"] for o in out], plan)
    images = sum(o["images"] for o in out)
    skipped = [k for o in out for k in o["skipped"]]
    return stats, means, MultiResult(seconds, [o["seconds"] for o in out], images, skipped), out[0]["tensors"]


def evaluate_sharded(models: dict[str, str | bytes], dataset: Dataset, placement: Placement, batch_size: int = 256,
                     decoder: str = "nvjpeg", concurrent: bool = True, workers: int | None = None, transport=None):
    """The evaluation pass over several GPUs (or a torchrun job's processes); predictions back in
    dataset order. `transport`: how the ranks are reached (default: `transport_for(placement)`).
    Returns (Evaluation, MultiResult, max |logit| differences over ranks)."""
    from calib.passes.evaluation import padded_batch

    transport = transport or transport_for(placement)
    if not transport.shares_files:   # other hosts cannot read this one's files: the models travel
        models = {n: m if isinstance(m, bytes) else Path(m).read_bytes() for n, m in models.items()}
    plan = shard_batches(len(dataset), batch_size, transport.ranks)
    tasks = [{"dataset": shard_dataset(dataset, batch_size, b), "models": models,
              "batch_size": batch_size, "pad_to": padded_batch(batch_size, len(dataset)), "decoder": decoder,
              "concurrent": concurrent, "workers": transport.workers(workers)} for b in plan]
    out, seconds = transport.run("evaluate", tasks)
    return merge_evaluate(out, dataset, list(models), seconds)


def observe_sharded(model, dataset: Dataset, placement: Placement, batch_size: int = 64,
                    tensors: list[str] | None = None, means_tensors: list[str] | None = None,
                    histogram: bool = True, bins: int = 4096, decoder: str = "nvjpeg", workers: int | None = None,
                    transport=None):
    """The calibration pass over several GPUs (or a torchrun job's processes), merged exactly.
    `transport`: how the ranks are reached (default: `transport_for(placement)`).
    Returns (TensorStatistics, ChannelMeans, MultiResult, tensor order)."""
    transport = transport or transport_for(placement)
    blob = model.SerializeToString()
    plan = shard_batches(len(dataset), batch_size, transport.ranks)
    tasks = [{"dataset": shard_dataset(dataset, batch_size, b), "model": blob,
              "tensors": tensors, "means_tensors": means_tensors, "histogram": histogram, "bins": bins,
              "batch_size": batch_size, "decoder": decoder, "workers": transport.workers(workers)} for b in plan]
    out, seconds = transport.run("collect", tasks)
    return merge_collect(out, plan, means_tensors, histogram, bins, seconds)
