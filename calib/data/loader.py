"""Batches of preprocessed images, decoded in worker processes with bounded prefetch.

Prefetch is a fixed window of batches in flight, so memory does not grow with the number of
images (multiprocessing's imap would run ahead and queue every decoded image). Any failure of
the consumer, of a worker, or a signal ends the workers within seconds: nothing is left running
or defunct (see WorkerPool).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import warnings
import weakref
from functools import partial
from typing import Callable, Iterator

import numpy as np

from calib.data.batch import Batch
from calib.data.dataset import Dataset
from calib.data.sources import ImageSource, Sample
from calib.data.transforms import Preprocess
from calib.errors import CalibError, InternalError


# Blocked while the workers start (see WorkerPool); a worker unblocks them with its own handlers set.
_WORKER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class SkipLog:
    """Counts undecodable files across batches and warns once per file."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def add(self, keys: list[str], quiet: bool = False) -> None:
        for key in keys:
            self.skipped.append(key)
            if not quiet:
                warnings.warn(f"skipped an image that cannot be decoded: {key}", stacklevel=3)


def _decode(source: ImageSource, preprocess: Preprocess, samples: list[Sample]):
    arrays, labels, keys, skipped = [], [], [], []
    for s in samples:
        try:
            arrays.append(preprocess(source.open(s)))
        except Exception:  # a corrupt or unsupported file is skipped, never fatal
            skipped.append(s.key)
            continue
        labels.append(s.label)
        keys.append(s.key)
    images = np.stack(arrays) if arrays else None
    return images, np.asarray(labels, np.int64), keys, skipped


class WorkerPool:
    """Decoding processes fed from one task queue, each running `work(task)`; results come back
    tagged with their task's index (`iter_batches` here; calib.data.host_decode for the GPU);
    `nice` lowers the workers' CPU priority.
    Written for teardown rather than taken from multiprocessing.Pool, which waits forever for the
    task of a worker that was killed (CPython issue 22393) and whose terminate() joins handler
    threads that interpreter shutdown may already have frozen: here a dead worker is an error
    within a second, and close() ends every worker (SIGTERM, then SIGKILL) and reaps it."""

    POLL = 0.5  # seconds between checks that the workers are alive

    def __init__(self, workers: int, work: Callable, nice: int = 0):
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        self.procs = []
        _LIVE_POOLS.add(self)
        # Workers are born with SIGINT/SIGTERM blocked and unblock them once their own handlers are
        # set: a signal sent while a worker starts is then delivered under its handlers, not lost
        # to a parent's handler it inherited through fork.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
        try:
            for i in range(workers):
                p = ctx.Process(target=_worker_main, name=f"calib-decode-{i}", daemon=True,
                                args=(self.tasks, self.results, work, os.getpid(), nice))
                p.start()
                self.procs.append(p)
        except BaseException:
            self.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def submit(self, index: int, task) -> None:
        self.tasks.put((index, task))

    def get(self):
        """The next finished task as (index, result); raises if a worker died or failed."""
        while True:
            try:
                index, ok, payload = self.results.get(timeout=self.POLL)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode is not None]
                if dead:
                    code = dead[0].exitcode
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    raise CalibError(f"an image decoding process ended unexpectedly ({how}; out of memory?)") from None
                continue
            if not ok:
                raise InternalError(f"image decoding failed in a worker process: {payload}")
            return index, payload

    def close(self, grace: float = 2.0) -> None:
        _LIVE_POOLS.discard(self)
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join(grace)
        for q in (self.tasks, self.results):
            q.cancel_join_thread()  # never wait at exit to flush tasks no worker will read
            q.close()


_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    """Last resort for a consumer that never closed its batches (an uncaught exception): end the
    workers while the interpreter is still whole."""
    for pool in list(_LIVE_POOLS):
        pool.close(grace=0.5)


def _worker_main(tasks, results, work: Callable, parent: int, nice: int = 0) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and ends the workers (their
    # own KeyboardInterrupt tracebacks would bury its one-line message). SIGTERM ends a worker
    # at once, whatever handler it inherited from the parent through fork.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)   # blocked by the parent for the start
    if nice:
        try:
            os.nice(nice)   # lower priority: the parent's threads get a core first
        except OSError:   # pragma: no cover - not allowed here: the same priority, nothing else changes
            pass
    while True:
        if os.getppid() != parent:
            # The parent died without closing the pool (SIGKILL): do not outlive it, nor wait at
            # exit to flush results no one will read (the worker holds the parent's stdout and
            # stderr: whoever waits for them to close would wait for it too).
            results.cancel_join_thread()
            return
        try:
            item = tasks.get(timeout=WorkerPool.POLL)
        except queue.Empty:
            continue
        if item is None:
            return
        index, task = item
        try:
            out = (index, True, work(task))
        except Exception as e:  # not a bad image (those are skipped): a bug worth one line
            out = (index, False, f"{type(e).__name__}: {e}")
        results.put(out)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def iter_batches(dataset: Dataset, batch_size: int, workers: int | None = None,
                 progress: str | None = None, skips: SkipLog | None = None,
                 prefetch: int = 2) -> Iterator[Batch]:
    """Yield preprocessed batches in dataset order. Undecodable images are skipped, logged in `skips`.

    workers=0 decodes in this process (tests, tiny sets); otherwise `workers` processes keep at
    most `workers * prefetch` batches in flight. The workers end when the generator is
    exhausted or closed: a consumer that may stop early should close it (`with
    contextlib.closing(iter_batches(...)) as batches:`), so that its failure ends them at once
    rather than when the generator is collected.
    """
    from calib.progress import progress_bar

    workers = default_workers() if workers is None else workers
    chunks = [dataset.samples[i:i + batch_size] for i in range(0, len(dataset.samples), batch_size)]
    # In a log: whole lines, at most one per 5 s (calib.progress).
    bar = progress_bar(total=len(dataset.samples), desc=progress, unit="img", enabled=progress is not None)
    skips = skips if skips is not None else SkipLog()
    try:
        if workers == 0 or len(chunks) <= 1:
            results = (_decode(dataset.source, dataset.preprocess, c) for c in chunks)
            yield from _emit(results, bar, skips)
            return
        pool = WorkerPool(min(workers, len(chunks)), partial(_decode, dataset.source, dataset.preprocess))
        try:
            yield from _emit(_in_order(pool, chunks, max(2, workers * prefetch)), bar, skips)
        finally:
            pool.close()
    finally:
        bar.close()


def _in_order(pool: WorkerPool, chunks: list[list[Sample]], window: int):
    """Decoded chunks in dataset order, at most `window` submitted and not yet handed out."""
    submitted, done = 0, {}
    for index in range(len(chunks)):
        while submitted < len(chunks) and submitted - index < window:
            pool.submit(submitted, chunks[submitted])
            submitted += 1
        while index not in done:
            i, decoded = pool.get()
            done[i] = decoded
        yield done.pop(index)


def _emit(results, bar, skips: SkipLog) -> Iterator[Batch]:
    for images, labels, keys, skipped in results:
        skips.add(skipped, quiet=False)
        bar.update(len(keys) + len(skipped))
        if images is not None:
            yield Batch(images, labels, keys, skipped)
