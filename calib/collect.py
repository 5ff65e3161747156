"""Stream a dataset through the FP32 model with ONNX Runtime and observe every activation.

Every float activation becomes an extra graph output for the calibration session only; each
batch's activations are handed to the observer and dropped, so memory does not grow with
the number of images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import onnx

from calib.data import Dataset, SkipLog, iter_batches
from calib.quantize.graph import GraphIndex


class Observer(Protocol):
    def observe(self, name: str, x) -> None: ...


@dataclass
class CollectResult:
    images: int
    skipped: list[str]
    seconds: float
    tensors: list[str]


def expose_activations(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose outputs include every float activation tensor."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    index = GraphIndex(exposed)
    names = index.activations()
    existing = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in existing:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return exposed, names


def collect(model: onnx.ModelProto, dataset: Dataset, observer: Observer, batch_size: int = 16,
            workers: int | None = None, progress: str | None = "calibrating",
            intra_op_threads: int = 0) -> CollectResult:
    import onnxruntime as ort

    exposed, names = expose_activations(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs() if o.name in set(names)]
    skips = SkipLog()
    start = time.perf_counter()
    count = 0
    for batch in iter_batches(dataset, batch_size, workers=workers, progress=progress, skips=skips):
        values = session.run(output_names, {input_name: batch.images})
        for name, value in zip(output_names, values):
            observer.observe(name, value)
        count += len(batch.keys)
        del values  # activations are never kept past their batch
    return CollectResult(count, skips.skipped, time.perf_counter() - start, output_names)
