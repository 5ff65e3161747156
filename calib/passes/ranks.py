"""One rank's share of a sharded pass, whatever transport brought it (`calib.passes.shard`: a
process per GPU of this host; `calib.passes.distributed`: a torchrun job's processes): load the
models on the rank's device, wait at the transport's barrier until every rank has, walk the
rank's batches (the same passes as one device, `calib.passes.calibration` and
`calib.passes.evaluation`), and return what the merges need, as host objects (numpy arrays,
state dicts) that either transport can pickle.
"""

from __future__ import annotations

from calib.data import Dataset


def decode_workers(workers: int | None, on_gpu: bool, share: int) -> int:
    """Decode processes for one of `share` ranks of this host: `workers` as asked, else its share
    of the cores (on a GPU the Pillow workers of decoder "pil", less the threads that feed the
    GPUs; on the CPU the loader's default). The images decoded do not depend on it."""
    if workers is not None:
        return workers
    if on_gpu:
        from calib.data.host_decode import default_gpu_workers

        return default_gpu_workers(share=share)
    from calib.data.loader import default_workers

    return max(1, default_workers() // max(share, 1))


def use_device(device: str) -> None:
    """Make `device` this process's current CUDA device (nothing to do on the CPU)."""
    if device != "cpu":
        import torch

        torch.cuda.set_device(device)


def _evaluate_rank(device: str, task: dict, barrier) -> dict:
    """The evaluation pass over this rank's batches: the top-5 and logits powers of its images."""
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
    """The calibration pass over this rank's batches: its statistics' state and its channel-mean
    log (batch by batch, for `ChannelMeans.replay`)."""
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


def _warm(runners: dict, dataset: Dataset, device: str, batch: int) -> None:
    """One run per model at the one batch shape the evaluation runs (`padded_batch`): cuDNN/cuBLAS
    set-up and the output buffers stay out of the timing, as they do for a single GPU whose
    models have already run that shape. The CPU has nothing to set up."""
    if device == "cpu":
        return
    import torch

    size = dataset.preprocess.size
    x = torch.zeros((batch, 3, size, size), dtype=torch.float32, device=device)
    for r in runners.values():
        r.infer(x)


# kind -> (device, task, barrier) -> payload: `barrier.wait()` once the models are loaded
RANK_WORK = {"evaluate": _evaluate_rank, "collect": _collect_rank}
