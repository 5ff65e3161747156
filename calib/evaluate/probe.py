"""Before any calibration, that a task's metric reads the model's outputs (a detector's layout, a
segmenter's class map): one gray image (or, for a model fed named arrays, a feed of zeros) through
the FP32 model on ONNX Runtime's CPU and through the metric, so a --task that does not fit the
outputs ends in the metric's one line before the calibration pass, not after the evaluation.

Why here: it is a model run through a task metric, which `calib run` (`calib.commands.task`) and
`calib sensitivity` both ask for before they calibrate; the outputs it returns are also what
`--labels` is checked against (`calib.data.labels`: the class count, the output's size)."""

from __future__ import annotations

import onnx

from calib.metrics.registry import get_metric
from calib.models import fixed_batch


def check_task_fits(prepared: onnx.ModelProto, task: str, size: "tuple[int, int] | dict", **params) -> dict:
    """The FP32 outputs of `prepared` for one gray image of `size` (H, W), or for `size` a feed of
    zeros (name -> an array of the input's shape and dtype), after `task`'s metric (built with
    `params`) has read them as both models' outputs. One-line CalibErrors from the metric."""
    import numpy as np

    from calib.backends.ort import OrtRunner

    batch = fixed_batch(prepared) or 1
    feed = ({k: np.zeros((batch, *v.shape[1:]), v.dtype) for k, v in size.items()} if isinstance(size, dict)
            else np.zeros((1, 3, *size), np.float32))
    runner = OrtRunner(prepared, exact=False)
    try:
        values = runner.infer(feed)
    finally:
        runner.close()
    outputs = dict(zip(runner.output_names, values))
    metric = get_metric(task, **params)
    keys = ["probe"] if not isinstance(size, dict) else [f"probe{i}" for i in range(batch)]
    metric.update("fp32", keys, outputs)
    metric.update("int8", keys, outputs)
    metric.result()
    return outputs
