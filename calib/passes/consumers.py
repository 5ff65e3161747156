"""What the walk feeds: consumers of each batch's outputs. Each does its arithmetic through
`calib.tensor`, so one consumer serves host arrays on the CPU and device tensors on a GPU.

- `Observe`: calibration statistics, calibrators and channel means (`calib.calibrators`).
- `Predict`: top-5 per model, per-image logits powers against FP32, largest logit differences:
  what `calib.stats.accuracy.Evaluation` holds.
- `Sqnr`: per-tensor signal and noise power of test models against a reference model.
- `Keep`: one output of one runner, concatenated (the ranker's and the search's logits).
- `KeepAll`: every output of one runner, concatenated per output (the same for a model that is
  not a classifier: a detector's boxes and scores, a segmenter's class scores).
- `Judge`: every output of a test model against a reference model, per image, and the task
  metric (`calib.metrics`) fed both models' outputs: how a model that is not a classifier is judged.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from calib import tensor
from calib.passes.walk import Step, input_of


class Observe:
    """Shows `names` (in this order) of each batch to `observer`: runner `runner`'s outputs, or
    the batch's own input for a name in `inputs` (an observed graph input). Device tensors go to
    observers that reduce them on the device (statistics, calibrators, channel means); any other
    observer gets host copies."""

    def __init__(self, observer: Any, names: Sequence[str], runner: str = "fp32", inputs: Sequence[str] = ()):
        self.observer = observer
        self.names = list(names)
        self.runner = runner
        self.inputs = set(inputs)
        self.device_ready = _reduces_on_device(observer)

    def consume(self, step: Step) -> None:
        _set_batch(self.observer, step.index)
        outputs = step.outputs[self.runner]
        for name in self.names:
            x = input_of(step.batch, name) if name in self.inputs else outputs[name]
            if not self.device_ready and tensor.on_device(x):
                x = tensor.to_numpy(x)
            self.observer.observe(name, x)


def _reduces_on_device(observer: Any) -> bool:
    from calib.calibrators import Calibrator
    from calib.calibrators.channel_means import ChannelMeans, Observers
    from calib.calibrators.statistics import TensorStatistics

    if isinstance(observer, Observers):
        return all(_reduces_on_device(o) for o in observer.observers)
    return isinstance(observer, (TensorStatistics, Calibrator, ChannelMeans))


def _set_batch(observer: Any, index: int) -> None:
    """Channel means record the batch index their log replays in (`ChannelMeans.replay`)."""
    for o in getattr(observer, "observers", (observer,)):
        if hasattr(o, "batch") and hasattr(o, "replay"):
            o.batch = index


class Predict:
    """Top-5 of each runner's first output (logits) per image; with a `reference` runner, the
    per-image sum of its squared logits (signal) and of each other runner's squared difference
    (noise), and the largest |logit| difference between every pair of runners. Accumulated
    where the logits are (on a GPU, nothing comes back to the host before `result`)."""

    def __init__(self, names: Sequence[str], reference: str = "fp32", output: str | None = None):
        self.names = list(names)
        self.reference = reference if reference in self.names else None
        self.output = output
        self.keys: list[str] = []
        self.labels: list[np.ndarray] = []
        self.tops: dict[str, list] = {n: [] for n in self.names}
        self.signal: list = []
        self.noise: dict[str, list] = {n: [] for n in self.names if n != self.reference} if self.reference else {}
        self.diffs: dict[str, list] = {f"{a}/{b}": [] for i, a in enumerate(self.names) for b in self.names[i + 1:]}

    def consume(self, step: Step) -> None:
        n = step.size
        logits = {m: tensor.rows(self._logits(step.outputs[m]), n) for m in self.names}
        for m in self.names:
            self.tops[m].append(tensor.top5(logits[m]))
        if self.reference is not None:
            ref = logits[self.reference]
            self.signal.append(tensor.row_power(ref))
            for m in self.noise:
                self.noise[m].append(tensor.row_error_power(ref, logits[m]))
        for pair in self.diffs:
            a, b = pair.split("/")
            self.diffs[pair].append(tensor.max_abs_diff(logits[a], logits[b]))
        self.keys.extend(step.batch.keys)
        self.labels.append(np.asarray(step.batch.labels))

    def _logits(self, outputs: dict) -> Any:
        return outputs[self.output] if self.output is not None else next(iter(outputs.values()))

    def result(self, skipped: list[str], seconds: float):
        """The `Evaluation` (host arrays), and the largest |logit| difference per pair of runners."""
        from calib.stats.accuracy import Evaluation, Predictions

        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        preds = {m: Predictions(labels, tensor.to_numpy(tensor.concat(t)).astype(np.int64) if t
                                else np.zeros((0, 5), np.int64)) for m, t in self.tops.items()}
        signal = tensor.to_numpy(tensor.concat(self.signal)) if self.signal else None
        noise = {m: tensor.to_numpy(tensor.concat(v)) for m, v in self.noise.items() if v}
        diffs = {pair: tensor.stack_max(v) for pair, v in self.diffs.items()}
        return Evaluation(list(self.keys), skipped, preds, signal, noise, seconds), diffs


class Sqnr:
    """Signal and noise power per tensor of runner `test` against runner `reference`, summed over
    batches: `view[tensor]` names the test model's output compared with the reference's
    `tensor`. float32 products summed in float64: exact enough, and no float64 copy."""

    def __init__(self, view: dict[str, str], reference: str = "fp32", test: str = "int8"):
        from calib.stats.sqnr import SqnrAccumulator

        self.view = view
        self.reference, self.test = reference, test
        self.accumulator = SqnrAccumulator()

    def consume(self, step: Step) -> None:
        ref, test = step.outputs[self.reference], step.outputs[self.test]
        for name, other in self.view.items():
            self.accumulator.add(name, tensor.to_numpy(ref[name]), tensor.to_numpy(test[other]))

    def result(self) -> dict[str, float]:
        return self.accumulator.result()


class Keep:
    """One output of one runner, kept for every batch (host arrays, float32, batch order)."""

    def __init__(self, runner: str, output: str | None = None):
        self.runner, self.output = runner, output
        self.parts: list[np.ndarray] = []

    def consume(self, step: Step) -> None:
        outputs = step.outputs[self.runner]
        x = outputs[self.output] if self.output is not None else next(iter(outputs.values()))
        self.parts.append(np.asarray(tensor.to_numpy(x), np.float32))

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts)


class KeepAll:
    """Every output of one runner, kept for every batch (host arrays in the dtype the model gives,
    batch order), by output name in the runner's order."""

    def __init__(self, runner: str):
        self.runner = runner
        self.parts: dict[str, list[np.ndarray]] = {}

    def consume(self, step: Step) -> None:
        for name, x in step.outputs[self.runner].items():
            self.parts.setdefault(name, []).append(np.asarray(tensor.to_numpy(x)))

    def result(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


class Judge:
    """Every output of runner `test` against runner `reference` per image (`calib.metrics.outputs`:
    SQNR with its paired interval, cosine) and the task `metric` (`calib.metrics.Metric`) fed both
    runners' outputs, batch by batch; host copies (the metrics are numpy). `inputs`: the batch's
    keys -> further keyword arguments of the metric's `update` for those images, the same for both
    runners (the ground truth of `calib.data.labels`: masks, or how boxes map back to the image)."""

    def __init__(self, metric: Any, reference: str = "fp32", test: str = "int8",
                 inputs: Callable[[list[str]], dict] | None = None):
        from calib.metrics.outputs import OutputsAccumulator

        self.metric, self.reference, self.test, self.inputs = metric, reference, test, inputs
        self.outputs = OutputsAccumulator()
        self.keys: list[str] = []

    def consume(self, step: Step) -> None:
        ref = {k: tensor.to_numpy(v) for k, v in step.outputs[self.reference].items()}
        test = {k: tensor.to_numpy(v) for k, v in step.outputs[self.test].items()}
        self.outputs.update(ref, test, step.size)
        extra = self.inputs(step.batch.keys) if self.inputs is not None else {}
        self.metric.update(self.reference, step.batch.keys, ref, **extra)
        self.metric.update(self.test, step.batch.keys, test, **extra)
        self.keys.extend(step.batch.keys)
