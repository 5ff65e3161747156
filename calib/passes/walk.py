"""The walk: batches through models into consumers. The only loop in calib that runs models on data.

Calibration statistics, channel means, evaluation accumulators, per-tensor SQNR, histograms and
the ranker's logits are all consumers of one loop: a source yields batches (host arrays from the
CPU decoders, device tensors from the GPU decoders, or a decoded set held in memory), every
runner (`calib.backends.Runner`: host or device arrays, the device owned by the runner) runs on
each batch, and each consumer sees the batch with every runner's outputs. Where it runs is the
runners' and the source's business; several GPUs are one wrapper around this loop
(`calib.passes.shard`).

Short batches are handled one way everywhere: with `pad_to`, a batch with fewer images is padded
with zero images to that size and the padding's outputs are dropped before any consumer sees
them (each image's outputs do not depend on the others in its batch). ONNX Runtime's CUDA
provider re-plans a model whenever its input shape changes, so on a GPU every batch runs at one
shape.

Overlap, as measured before the loops were merged into this one:
- `background`: consumers run on one thread of their own while the runners compute the next
  batch (at most one batch queued: bounded memory). ONNX Runtime releases the GIL, so on the CPU
  the statistics (histograms) and the model use separate cores. A consumer error is raised in
  the caller's thread; when the caller fails first, the queued batch is dropped and the one in
  progress finishes before the caller's error propagates.
- `concurrent`: the runners of one batch run in threads of their own (FP32 and INT8 kernels
  overlap on a GPU: each `OrtRunner` on CUDA runs on a stream of its own).
Device outputs are copied before a consumer keeps them past the runner's next call (a GPU runner
reuses its output buffers).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence

from calib import tensor


@dataclass
class Step:
    """One batch as a consumer sees it: the batch (keys, labels, inputs), the index of the batch
    in the walk, and each runner's outputs for its real images (runner -> output name -> array)."""
    batch: Any
    index: int
    outputs: dict[str, dict[str, Any]]

    @property
    def size(self) -> int:
        return len(self.batch.keys)


class Consumer(Protocol):
    def consume(self, step: Step) -> None: ...


@dataclass
class Walked:
    batches: int
    images: int
    seconds: float    # first batch asked for -> last batch consumed


def inputs_of(batch: Any) -> Any:
    """What a runner is fed: the batch's images (one input), or its named inputs."""
    return batch.images


def input_of(batch: Any, name: str) -> Any:
    """The batch's input `name`: the named array of a batch of arrays, else its images."""
    return batch.images[name] if isinstance(batch.images, dict) else batch.images


def walk(source: Iterable, runners: Mapping[str, Any], consumers: Sequence[Consumer], *,
         outputs: Mapping[str, Sequence[str] | None] | None = None, pad_to: int | None = None,
         concurrent: bool = False, background: bool = False) -> Walked:
    """Run every runner on every batch of `source` and hand each consumer every `Step`.
    `outputs[runner]`: the outputs to ask that runner for (default: its own)."""
    outputs = outputs or {}
    names = list(runners)
    pool = ThreadPoolExecutor(len(names)) if concurrent and len(names) > 1 else None
    sink = _Background(consumers) if background else None
    images = batches = 0
    start = time.perf_counter()

    def run(name: str, feed: Any, n: int, padded: bool) -> dict[str, Any]:
        asked = outputs.get(name)
        values = runners[name].infer(feed, asked)
        keys = asked if asked is not None else runners[name].output_names
        kept = {k: v[:n] if padded and len(v.shape) else v for k, v in zip(keys, values)}
        return {k: tensor.owned(v) for k, v in kept.items()} if sink is not None else kept

    try:
        with contextlib.ExitStack() as stack:
            if hasattr(source, "close"):
                stack.callback(source.close)   # decoding workers end with the loop, even on an error
            for batch in source:
                n = len(batch.keys)
                feed = inputs_of(batch)
                padded = pad_to is not None and n < pad_to
                if padded:
                    feed = _padded(feed, pad_to)
                if pool is not None:
                    futures = {m: pool.submit(run, m, feed, n, padded) for m in names}
                    results = {m: f.result() for m, f in futures.items()}
                else:
                    results = {m: run(m, feed, n, padded) for m in names}
                step = Step(batch, batches, results)
                if sink is not None:
                    sink.put(step)
                else:
                    for c in consumers:
                        c.consume(step)
                del results, step   # device or host outputs live only until consumed
                images += n
                batches += 1
    except BaseException as e:
        if sink is not None:
            sink.close(cancel=True)
            if sink.error is not None and sink.error is not e and hasattr(e, "add_note"):
                e.add_note(f"the consumer thread also failed: {sink.error!r}")
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    if sink is not None:
        sink.close()
    return Walked(batches, images, time.perf_counter() - start)


def _padded(feed: Any, size: int) -> Any:
    if isinstance(feed, dict):
        return {k: tensor.pad_rows(v, size) for k, v in feed.items()}
    return tensor.pad_rows(feed, size)


class _Background:
    """Feeds steps to the consumers on one thread, at most one step queued (bounded memory)."""

    def __init__(self, consumers: Sequence[Consumer]):
        _limit_malloc_arenas()
        self.consumers = consumers
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._work, name="calib-consume", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            step = self.queue.get()
            if step is None:
                return
            if self.error is None and not self.cancelled:
                try:
                    for c in self.consumers:
                        c.consume(step)
                except BaseException as e:  # re-raised in the caller's thread
                    self.error = e
            del step

    def put(self, step: Step) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(step)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.cancelled = True
            try:
                self.queue.get_nowait()  # the step not yet started is not consumed
            except queue.Empty:
                pass
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and not cancel:
            raise self.error


def _limit_malloc_arenas() -> None:
    """Outputs are allocated on the walking thread and freed on the consumer thread; with glibc's
    default of one malloc arena per thread, that pattern fragments memory and peak RSS crept up
    with the number of images (+19% from 100 to 500). One arena keeps it flat."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
