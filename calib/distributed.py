"""Evaluation and calibration on one or several GPUs: one process per GPU, batches dealt out.

Sharding is by whole batches, dealt round-robin (batch i to GPU i mod n): every batch holds
exactly the images it holds on one GPU, so each GPU computes the same activations for it as a
single GPU would (same shapes, cuDNN algorithms chosen by heuristic, TF32 off: see
`calib.backends.ort`). Merging is then exact:

- `TensorStatistics.merge` adds integer bin counts over power-of-two-aligned bins and takes
  min/max, so the merged histogram is the one-GPU histogram bit for bit, whatever the order;
- channel means (float sums) are replayed batch by batch in global batch order, so the
  additions happen in the one-GPU order too;
- predictions are put back in dataset order.

So the cache and its sidecar are bit-identical to one GPU's (except the timing). Each GPU's
process decodes its own batches (nvJPEG on its GPU) and runs its own ONNX Runtime sessions: no
tensor has to cross between GPUs, only the statistics (a few MB) and the top-5 indices, which
come back through a multiprocessing queue. (`torch.distributed` with NCCL would add nothing
here: there is no collective on device tensors to do.) Processes are started with "spawn":
CUDA cannot be used in a forked child.

`evaluate_device` is the one-GPU evaluation (decode once, run every model on the same device
batch; FP32 and INT8 in two threads so their kernels overlap on the GPU; top-5 on the device,
only indices come back).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calib.data import Dataset, SkipLog
from calib.errors import CalibError


# --------------------------------------------------------------------------- the plan
def parse_devices(spec: str) -> list[str]:
    """"cuda" -> ["cuda:0"]; "cuda:1" -> ["cuda:1"]; "cuda:0,1" -> ["cuda:0", "cuda:1"]."""
    kind, _, rest = spec.partition(":")
    if kind != "cuda":
        raise CalibError(f"several GPUs are named as cuda:0,1 (got '{spec}')")
    if not rest:
        return ["cuda:0"]
    ids = [p.strip() for p in rest.split(",")]
    if not all(p.isdigit() for p in ids) or len(set(ids)) != len(ids):
        raise CalibError(f"bad GPU list '{spec}': expected distinct indices, e.g. cuda:0,1")
    return [f"cuda:{p}" for p in ids]


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


def replay_means(target, logs: list[list[tuple]], batch_order: list[list[int]]) -> None:
    """Add per-batch channel sums into `target` (a ChannelMeans) in global batch order.

    `logs[rank]` holds (local batch, name, sums, count) records; `batch_order[rank][local]` is
    the global index of that rank's local batch."""
    records = []
    for rank, log in enumerate(logs):
        for seq, (local, name, s, count) in enumerate(log):
            records.append((batch_order[rank][local], seq, name, s, count))
    records.sort(key=lambda r: (r[0], r[1]))
    for _, _, name, s, count in records:
        target.sums[name] = target.sums[name] + s if name in target.sums else s.copy()
        target.counts[name] = target.counts.get(name, 0) + count


# --------------------------------------------------------------------------- one GPU
@dataclass
class DeviceEvaluation:
    """What `evaluate_device` measured; `evaluation` is calib's usual `Evaluation`."""
    evaluation: object
    seconds: float            # first batch asked for -> last result back (sessions already loaded)
    images: int
    decode_path: str
    logit_max_abs_diff: dict[str, float] = field(default_factory=dict)  # "a/b" -> max |logit a - logit b|


def load_runners(models: dict[str, str | os.PathLike | bytes], device: str) -> dict:
    from calib.backends.ort import OrtRunner

    return {name: OrtRunner(m if isinstance(m, bytes) else Path(m), device=device) for name, m in models.items()}


def evaluate_device(runners: dict, dataset: Dataset, batch_size: int = 256, device: str = "cuda",
                    decode: str = "nvjpeg", resample: str = "pil", concurrent: bool = True,
                    progress: str | None = None, workers: int | None = None,
                    pad_to: int | None = None) -> DeviceEvaluation:
    """Every runner (OrtRunner on `device`) on each decoded batch; top-5 on the device. Short
    batches are padded to `pad_to` images (default: the batch size, or the whole dataset when it
    is smaller; several GPUs pass the whole dataset's). Call it on the device's default stream:
    the model threads order their runs after that stream (`OrtRunner.run_device`)."""
    import torch

    from calib.collect_gpu import device_batches
    from calib.data.gpu_decode import decode_path
    from calib.evaluate.accuracy import Evaluation, Predictions

    names = list(runners)
    skips = SkipLog()
    keys: list[str] = []
    labels: list[np.ndarray] = []
    tops: dict[str, list] = {n: [] for n in names}
    # Per-image logits powers against FP32 (the logits SQNR of the report), summed on the device.
    signal: list = []
    noise: dict[str, list] = {n: [] for n in names if n != "fp32"}
    diffs = {f"{a}/{b}": torch.zeros((), dtype=torch.float32, device=device)
             for i, a in enumerate(names) for b in names[i + 1:]}
    pool = ThreadPoolExecutor(len(names)) if concurrent and len(names) > 1 else None

    # Every run at one batch shape: the CUDA provider re-plans a model whenever its input shape
    # changes (measured on an H200: 0.6-0.95 s for the FP32+INT8 pair, each time), so a short
    # batch (the last one, or one with skipped images) is padded with zeros and its padding's
    # outputs are dropped. Each image's outputs do not depend on the others in its batch, and
    # every batch, on one GPU or several, then runs at the same shape.
    full = pad_to or padded_batch(batch_size, len(dataset))

    def run(name, images, n):
        return runners[name].run_device(images)[0][:n].clone()   # the runner reuses its output buffer

    def account(batch, logits) -> None:
        """Top-5, logits powers and differences of a finished batch: small kernels, no host wait."""
        for n in names:
            tops[n].append(torch.topk(logits[n], min(5, logits[n].shape[1]), dim=1).indices)
        if "fp32" in logits:
            ref = logits["fp32"].double()
            signal.append((ref * ref).sum(1))
            for n in noise:
                err = ref - logits[n].double()
                noise[n].append((err * err).sum(1))
        for pair in diffs:
            a, b = pair.split("/")
            diffs[pair] = torch.maximum(diffs[pair], (logits[a] - logits[b]).abs().max())
        keys.extend(batch.keys)
        labels.append(batch.labels)

    start = time.perf_counter()
    try:
        finished = None
        for batch in device_batches(dataset, batch_size, device, decode, resample, skips, progress, workers):
            images, n = batch.images, batch.images.shape[0]
            if n < full:
                images = torch.cat([images, images.new_zeros((full - n, *images.shape[1:]))])
            # The models start on this batch before the last one's results are gathered, so the GPU
            # does not wait for that bookkeeping.
            if pool is not None:
                futures = {m: pool.submit(run, m, images, n) for m in names}
            else:
                logits = {m: run(m, images, n) for m in names}
            if finished is not None:
                account(*finished)
            if pool is not None:
                logits = {m: f.result() for m, f in futures.items()}
            finished = (batch, logits)
        if finished is not None:
            account(*finished)
        host = {n: (torch.cat(t).cpu().numpy().astype(np.int64) if t else np.zeros((0, 5), np.int64))
                for n, t in tops.items()}
        host_signal = torch.cat(signal).cpu().numpy() if signal else None
        host_noise = {n: torch.cat(v).cpu().numpy() for n, v in noise.items() if v}
        host_diffs = {pair: float(d) for pair, d in diffs.items()}
    finally:
        if pool is not None:
            pool.shutdown()
    seconds = time.perf_counter() - start
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    preds = {n: Predictions(all_labels, host[n]) for n in names}
    path = decode_path(dataset.preprocess, decode, resample)
    evaluation = Evaluation(keys, skips.skipped, preds, host_signal, host_noise, seconds)
    return DeviceEvaluation(evaluation, seconds, len(keys), path, host_diffs)


def padded_batch(batch_size: int, images: int) -> int:
    """The one batch shape an evaluation of `images` images runs at (`evaluate_device`)."""
    return max(1, min(batch_size, images))


# --------------------------------------------------------------------------- several GPUs
def _worker(rank: int, device: str, task: dict, results) -> None:
    """One GPU's share: load, wait for everyone (barrier), work, send back the result."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    try:
        import torch

        torch.cuda.set_device(device)
        barrier = task["barrier"]
        shard = task["dataset"]
        if task["kind"] == "evaluate":
            runners = load_runners(task["models"], device)
            _warm(runners, shard, device, task["pad_to"])
            barrier.wait()
            out = evaluate_device(runners, shard, task["batch_size"], device, task["decode"], task["resample"],
                                  task.get("concurrent", True), workers=task["workers"], pad_to=task["pad_to"])
            ev = out.evaluation
            payload = {"keys": ev.keys, "skipped": ev.skipped,
                       "top5": {n: p.top5 for n, p in ev.predictions.items()},
                       "labels": next(iter(ev.predictions.values())).labels if ev.predictions else None,
                       "seconds": out.seconds, "diffs": out.logit_max_abs_diff, "path": out.decode_path,
                       "signal": ev.signal, "noise": ev.noise}
        else:
            import onnx

            from calib.backends.ort import OrtRunner
            from calib.calibrators.channel_means import ChannelMeans, Observers
            from calib.calibrators.statistics import TensorStatistics
            from calib.collect_gpu import collect_gpu, exposed_with_shapes

            model = onnx.load_from_string(task["model"])
            exposed, _ = exposed_with_shapes(model, task["tensors"])
            runner = OrtRunner(exposed.SerializeToString(), device=device)
            stats = TensorStatistics(histogram=task["histogram"], bins=task["bins"])
            means = ChannelMeans(task["means_tensors"])
            log: list = []
            barrier.wait()
            result = collect_gpu(model, shard, Observers(stats, means), task["batch_size"], device,
                                 task["tensors"], None, task["decode"], task["resample"], runner=runner,
                                 batch_log=log, workers=task["workers"])
            payload = {"stats": stats.state_dict(), "log": log, "images": result.images,
                       "skipped": result.skipped, "seconds": result.seconds, "tensors": result.tensors}
        results.put((rank, payload, None))
    except BaseException as e:  # the parent raises it as one line
        try:
            task["barrier"].abort()   # nobody waits for a rank that will never arrive
        except Exception:
            pass
        results.put((rank, None, f"{type(e).__name__}: {e}"))


def _warm(runners: dict, dataset: Dataset, device: str, batch: int) -> None:
    """One run per model at the one batch shape `evaluate_device` runs (`padded_batch`):
    cuDNN/cuBLAS set-up and the output buffers stay out of the timing, as they do for a single
    GPU whose models have already run that shape."""
    import torch

    size = dataset.preprocess.size
    x = torch.zeros((batch, 3, size, size), dtype=torch.float32, device=device)
    for r in runners.values():
        r.run_device(x)


def _run_ranks(devices: list[str], tasks: list[dict]) -> tuple[list[dict], float]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(len(devices) + 1)
    procs = []
    for rank, (device, task) in enumerate(zip(devices, tasks)):
        task = dict(task, barrier=barrier)
        p = ctx.Process(target=_worker, args=(rank, device, task, results), daemon=True)
        p.start()
        procs.append(p)
    try:
        import threading

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


@dataclass
class MultiResult:
    seconds: float            # all ranks loaded -> last result back
    rank_seconds: list[float]
    images: int
    skipped: list[str]


def _gpu_workers(gpus: int, workers: int | None = None) -> int:
    """Pillow decode processes per rank (--gpu-decode pil): `workers` as asked (--workers), else
    each GPU's share of the cores."""
    from calib.data.host_decode import default_gpu_workers

    return workers if workers is not None else default_gpu_workers(share=gpus)


def evaluate_multi(models: dict[str, str], dataset: Dataset, devices: list[str], batch_size: int = 256,
                   decode: str = "nvjpeg", resample: str = "pil", concurrent: bool = True,
                   workers: int | None = None):
    """`evaluate_device` over several GPUs; predictions back in dataset order.
    Returns (Evaluation, MultiResult, max |logit| differences over ranks)."""
    from calib.evaluate.accuracy import Evaluation, Predictions

    plan = shard_batches(len(dataset), batch_size, len(devices))
    tasks = [{"kind": "evaluate", "dataset": shard_dataset(dataset, batch_size, b), "models": models,
              "batch_size": batch_size, "pad_to": padded_batch(batch_size, len(dataset)),
              "decode": decode, "resample": resample, "concurrent": concurrent,
              "workers": _gpu_workers(len(devices), workers)} for b in plan]
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


def collect_multi(model, dataset: Dataset, devices: list[str], batch_size: int = 64,
                  tensors: list[str] | None = None, means_tensors: list[str] | None = None,
                  histogram: bool = True, bins: int = 4096, decode: str = "nvjpeg", resample: str = "pil",
                  workers: int | None = None):
    """The calibration pass over several GPUs, merged exactly.
    Returns (TensorStatistics, ChannelMeans, CollectResult-like MultiResult, tensor order)."""
    from calib.calibrators.channel_means import ChannelMeans
    from calib.calibrators.statistics import TensorStatistics

    blob = model.SerializeToString()
    plan = shard_batches(len(dataset), batch_size, len(devices))
    tasks = [{"kind": "collect", "dataset": shard_dataset(dataset, batch_size, b), "model": blob,
              "tensors": tensors, "means_tensors": means_tensors, "histogram": histogram, "bins": bins,
              "batch_size": batch_size, "decode": decode, "resample": resample,
              "workers": _gpu_workers(len(devices), workers)} for b in plan]
    out, seconds = _run_ranks(devices, tasks)
    stats = TensorStatistics(histogram=histogram, bins=bins)
    for o in out:
        stats.merge(TensorStatistics.from_state_dict(o["stats"]))
    means = ChannelMeans(means_tensors)
    replay_means(means, [o["log"] for o in out], plan)
    images = sum(o["images"] for o in out)
    skipped = [k for o in out for k in o["skipped"]]
    return stats, means, MultiResult(seconds, [o["seconds"] for o in out], images, skipped), out[0]["tensors"]
