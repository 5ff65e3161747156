"""The evaluation pass: several models on the same decoded batches (one decode for all of them),
top-5 and logits powers accumulated where the logits are (`Predict`).

On the CPU the models run one after the other on each batch. On a GPU they run in threads of
their own (each `OrtRunner` on a CUDA stream of its own, so their kernels overlap), the previous
batch's bookkeeping runs while the models compute the next one, and every batch runs at one
shape (`padded_batch`: short batches are padded, see `calib.passes.walk`).
"""

from __future__ import annotations

from typing import Callable, Mapping

from calib.data import Dataset, SkipLog
from calib.passes.consumers import Predict
from calib.passes.source import Images, batches
from calib.passes.walk import walk


def padded_batch(batch_size: int, images: int) -> int:
    """The one batch shape an evaluation of `images` images runs at on a GPU."""
    return max(1, min(batch_size, images))


def evaluate(runners: Mapping, dataset: "Dataset | Images", batch_size: int = 32, device: str = "cpu",
             decoder: str = "nvjpeg", workers: int | None = None, progress: str | None = "evaluating",
             pad_to: int | None = None, concurrent: bool = True):
    """Every runner on each batch of `dataset` (decoded for `device`, or a decoded `Images` set).
    Returns (Evaluation, largest |logit| difference per pair of runners). On a GPU short batches
    are padded to `pad_to` (default: `padded_batch`; several GPUs pass the whole set's)."""
    skips = SkipLog()
    if isinstance(dataset, Images):
        source, skipped = dataset.batches(batch_size), list(dataset.skipped)
    else:
        source, skipped = batches(dataset, batch_size, device, decoder, workers, progress, skips), skips.skipped
    on_gpu = device != "cpu"
    if on_gpu and pad_to is None:
        pad_to = padded_batch(batch_size, len(dataset))
    predict = Predict(list(runners))
    walked = walk(source, runners, [predict], pad_to=pad_to if on_gpu else None,
                  concurrent=on_gpu and concurrent, background=on_gpu)
    return predict.result(skipped, walked.seconds)


def logits(runner, images: Images, batch_size: int = 32):
    """The first output of `runner` over `images`, in order (host float32)."""
    from calib.passes.consumers import Keep

    keep = Keep("model")
    walk(images.batches(batch_size), {"model": runner}, [keep])
    return keep.result()


def all_outputs(runner, images: Images, batch_size: int = 32) -> dict:
    """Every output of `runner` over `images`, by name in the runner's order, each in image order
    (host arrays): what the ranker and the search read of a model that is not a classifier."""
    from calib.passes.consumers import KeepAll

    keep = KeepAll("model")
    walk(images.batches(batch_size), {"model": runner}, [keep])
    return keep.result()


def judge(runners: Mapping, dataset: "Dataset", metric, batch_size: int = 32, device: str = "cpu",
          decoder: str = "nvjpeg", workers: int | None = None, progress: str | None = "evaluating",
          inputs: Callable[[list[str]], dict] | None = None, fixed_batch: int | None = None):
    """The evaluation of a model that is not a classifier: runners "fp32" and "int8" on each batch,
    every output compared (`Judge`; `inputs`: the metric's further arguments per batch, e.g. its
    ground truth). Returns (the Judge, skipped files, seconds). `fixed_batch`: the batch size the
    models' graphs fix, if they do (every batch is padded to it)."""
    from calib.passes.consumers import Judge

    skips = SkipLog()
    source = batches(dataset, batch_size, device, decoder, workers, progress, skips)
    consumer = Judge(metric, inputs=inputs)
    pad_to = padded_batch(batch_size, len(dataset)) if device != "cpu" else None
    if fixed_batch is not None and fixed_batch > 1:
        pad_to = fixed_batch
    walked = walk(source, runners, [consumer], pad_to=pad_to, concurrent=device != "cpu", background=device != "cpu")
    return consumer, skips.skipped, walked.seconds
