"""The calibration pass: the FP32 model with the quantized tensors exposed, walked over the
calibration images, every exposed activation shown to the observers (statistics, calibrators,
channel means) and dropped, so memory does not grow with the number of images.

On the CPU the observers run on a thread of their own while ONNX Runtime computes the next batch
(`walk(background=True)`); one core is left to them (on 2 cores ~20% faster than letting ONNX
Runtime take both). On a GPU the exposed outputs are device tensors bound with IOBinding and
reduced on the device (`TensorStatistics` and `ChannelMeans` take torch tensors); only scalars
and bin counts come back. TF32 is off and cuDNN picks algorithms by heuristic
(`calib.backends.ort`), so a batch's activations depend only on the batch: several GPUs
(`calib.passes.shard`) merge to the same bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from calib.data import Dataset, SkipLog
from calib.passes.consumers import Observe
from calib.passes.expose import FLOAT_ORT_TYPES, expose
from calib.passes.source import batches
from calib.passes.walk import walk


@dataclass
class CollectResult:
    images: int
    skipped: list[str]
    seconds: float
    tensors: list[str]    # the observed tensors, in the order of the exposed model's outputs


def fixed_batch_above_one(model: onnx.ModelProto) -> int | None:
    """The batch size a graph fixes, when above 1 (a short last batch is then padded to it): only
    a model fed named arrays keeps a fixed batch (calib.models.prepare)."""
    from calib.models.prepare import fixed_batch

    batch = fixed_batch(model)
    return batch if batch is not None and batch > 1 else None


def exposed_runner(model: onnx.ModelProto, tensors: list[str] | None, device: str = "cpu",
                   threads: int | None = None):
    """(runner of `model` with `tensors` exposed, the float tensors observed in output order)."""
    from calib.backends.ort import OrtRunner

    on_gpu = device != "cpu"
    exposed, names = expose(model, tensors, shapes=on_gpu)
    if threads is None:
        threads = max(1, (os.cpu_count() or 2) - 1)   # one core left to the observer thread
    runner = OrtRunner(exposed, threads=0 if on_gpu else threads, device=device)
    wanted = set(names)
    # Outputs declared without a type (inference could not tell) are observed only if float.
    order = [o.name for o in runner.session.get_outputs() if o.name in wanted and o.type in FLOAT_ORT_TYPES]
    return runner, order


def observe_pass(model: onnx.ModelProto, dataset: Dataset, observer, batch_size: int = 8, device: str = "cpu",
                 tensors: list[str] | None = None, workers: int | None = None, progress: str | None = "calibrating",
                 decoder: str = "nvjpeg", runner=None) -> CollectResult:
    """Walk `dataset` through `model` on `device` ("cpu" or "cuda:N") and show each exposed float
    tensor of each batch to `observer`. `runner`: an `exposed_runner` made beforehand (its
    creation then stays out of `seconds`). Any error ends the decoders and the observer thread
    before it propagates. A model whose graph fixes its batch size above 1 gets its short last
    batch padded to it (`calib.passes.walk`)."""
    runner, order = runner if runner is not None else exposed_runner(model, tensors, device)
    graph_inputs = {i.name for i in model.graph.input}
    inputs = [n for n in order if n in graph_inputs]
    outputs = [n for n in order if n not in graph_inputs]
    skips = SkipLog()
    source = batches(dataset, batch_size, device, decoder, workers, progress, skips)
    walked = walk(source, {"fp32": runner}, [Observe(observer, order, "fp32", inputs)],
                  outputs={"fp32": outputs}, background=device == "cpu", pad_to=fixed_batch_above_one(model))
    return CollectResult(walked.images, skips.skipped, walked.seconds, order)
