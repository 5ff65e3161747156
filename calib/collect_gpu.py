"""The FP32 calibration pass on a GPU: ONNX Runtime's CUDA provider, activations kept on the device.

Same contract as `calib.collect.collect` (an observer sees every exposed activation of every
batch; the result is a `CollectResult`), but:

- batches are decoded and preprocessed on the GPU (`calib.data.gpu_stream.gpu_batches`; or by
  the CPU decode workers and copied up with `decode="cpu"`, which gives the CPU path's pixels);
- the exposed activations are bound to preallocated torch CUDA tensors with IOBinding, so ORT
  writes them straight into memory torch owns (no host copy, no DLPack round trip needed);
- `TensorStatistics` reduces CUDA tensors on the device (`calib.calibrators._torch_reduce`:
  min/max and the power-of-two histogram's bin counts, bit-identical to the numpy path on the
  same values); only scalars and bin counts come back to the host;
- `ChannelMeans` (bias correction) is fed per-channel sums computed on the device; other
  observers get host numpy copies.

TF32 is off and cuDNN picks convolution algorithms by heuristic (see `calib.backends.ort`), so
the activations of a batch depend only on the batch: the statistics of a run are reproducible,
and `calib.distributed` can split batches over GPUs and merge to the same bits.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import onnx

from calib.collect import CollectResult, Observer, expose_activations
from calib.data import Dataset, SkipLog
from calib.errors import CalibError


def exposed_with_shapes(model: onnx.ModelProto, tensors: list[str] | None = None
                        ) -> tuple[onnx.ModelProto, list[str]]:
    """`expose_activations`, with the extra outputs typed and shaped by ONNX shape inference
    (so their device buffers can be allocated before the run)."""
    exposed, names = expose_activations(model, tensors)
    try:
        # Inferred on the original graph: there the activations are intermediate values.
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
                 + list(inferred.graph.input)}
    except Exception:  # shapes stay unknown: ORT allocates those outputs itself
        known = {}
    for out in exposed.graph.output:
        info = known.get(out.name)
        if info is not None and info.type.tensor_type.HasField("shape"):
            out.CopyFrom(info)
    return exposed, names


class DeviceChannelMeans:
    """Feeds a `ChannelMeans` from CUDA tensors: per-channel sums on the device, the same
    bookkeeping as `ChannelMeans.observe`. With `log`, each batch's sums are also recorded as
    (batch, name, sums, count), so shards can be replayed in global batch order."""

    def __init__(self, target, log: list | None = None) -> None:
        self.target = target
        self.log = log
        self.batch = 0

    def observe(self, name: str, x: Any) -> None:
        import torch

        t = self.target
        if t.tensors is not None and name not in t.tensors:
            return
        if x.ndim < 2 or not x.is_floating_point():
            return
        view = x.reshape(x.shape[0], x.shape[1], -1)
        s = view.sum(dim=2).to(torch.float64).sum(dim=0).cpu().numpy()
        if not np.all(np.isfinite(s)):
            return
        count = view.shape[0] * view.shape[2]
        if self.log is not None:
            self.log.append((self.batch, name, s.copy(), count))
        t.sums[name] = t.sums[name] + s if name in t.sums else s
        t.counts[name] = t.counts.get(name, 0) + count


class _HostCopy:
    """An observer that only understands numpy arrays."""

    def __init__(self, observer) -> None:
        self.observer = observer

    def observe(self, name: str, x: Any) -> None:
        self.observer.observe(name, x.detach().cpu().numpy())


def on_device(observer, log: list | None = None):
    """`observer` adapted to CUDA tensors: statistics and calibrators take them as they are,
    channel means are summed on the device, anything else gets host copies."""
    from calib.calibrators import Calibrator
    from calib.calibrators.channel_means import ChannelMeans, Observers
    from calib.calibrators.statistics import TensorStatistics

    if isinstance(observer, Observers):
        return Observers(*(on_device(o, log) for o in observer.observers))
    if isinstance(observer, ChannelMeans):
        return DeviceChannelMeans(observer, log)
    if isinstance(observer, (TensorStatistics, Calibrator)):
        return observer
    return _HostCopy(observer)


def _set_batch(observer, index: int) -> None:
    from calib.calibrators.channel_means import Observers

    if isinstance(observer, Observers):
        for o in observer.observers:
            _set_batch(o, index)
    elif isinstance(observer, DeviceChannelMeans):
        observer.batch = index


def device_batches(dataset: Dataset, batch_size: int, device: str, decode: str = "nvjpeg",
                   resample: str = "pil", skips: SkipLog | None = None,
                   progress: str | None = None, workers: int | None = None) -> Iterator:
    """`DeviceBatch`es from the GPU decoder (`decode="nvjpeg"`, or `"pil"`: the CPU path's
    preprocessing in `workers` processes, normalised on the GPU) or from the CPU decode workers
    copied to the GPU (`decode="cpu"`)."""
    from calib.data.gpu_decode import DECODERS
    from calib.data.gpu_stream import GpuBatchStream, gpu_batches

    if decode == "cpu":
        stream = GpuBatchStream(dataset, batch_size, device=device, progress=progress, skips=skips)
        with stream:
            yield from stream
        return
    if decode not in DECODERS:
        raise CalibError(f"unknown decode '{decode}' (choose from: cpu, {', '.join(DECODERS)})")
    yield from gpu_batches(dataset, batch_size, device, resample=resample, skips=skips, progress=progress,
                           decoder=decode, workers=workers)


def collect_gpu(model: onnx.ModelProto, dataset: Dataset, observer: Observer, batch_size: int = 64,
                device: str = "cuda", tensors: list[str] | None = None, progress: str | None = "calibrating",
                decode: str = "nvjpeg", resample: str = "pil", runner=None,
                batch_log: list | None = None, workers: int | None = None) -> CollectResult:
    """Stream `dataset` through the FP32 `model` on `device` (cuda or cuda:N) and show every
    exposed activation, as a CUDA tensor, to `observer`. `runner` (an `OrtRunner` of the exposed
    model from `exposed_with_shapes`) skips the session creation; `seconds` never includes it.
    `batch_log` receives per-batch channel sums (see `DeviceChannelMeans`)."""
    from calib.backends.ort import OrtRunner

    exposed, names = exposed_with_shapes(model, tensors)
    if runner is None:
        runner = OrtRunner(exposed.SerializeToString(), device=device)
    graph_inputs = {i.name for i in model.graph.input}
    outputs = [n for n in names if n not in graph_inputs]
    observed_inputs = [n for n in names if n in graph_inputs]
    adapted = on_device(observer, batch_log)
    skips = SkipLog()
    count = 0
    start = time.perf_counter()
    batches = device_batches(dataset, batch_size, device, decode, resample, skips, progress, workers)
    for index, batch in enumerate(batches):
        _set_batch(adapted, index)
        values = runner.run_device(batch.images, outputs)
        for name in observed_inputs:
            adapted.observe(name, batch.images)
        for name, value in zip(outputs, values):
            adapted.observe(name, value)
        count += batch.size
    wanted = set(names)  # reported in the CPU path's order: the session's outputs
    order = [o.name for o in exposed.graph.output if o.name in wanted]
    return CollectResult(count, skips.skipped, time.perf_counter() - start, order)
