"""GPU decoding in worker processes: each decodes every k-th batch on the same GPU and hands the
finished device batch to the consumer through CUDA IPC.

Why processes: in one process the decode thread shares the interpreter lock and the CPU with
whatever runs the models, and torchvision's nvJPEG call is synchronous (a global mutex and
`cudaStreamSynchronize` per call, `torchvision/csrc/io/image/cuda/decode_jpegs_cuda.cpp`), so a
decode thread and the model runs measured one after the other instead of side by side
(benchmarks/RESULTS.md, "GPU"). A worker process has its own interpreter and its own nvJPEG
state; several of them decode batches in parallel while the consumer only runs models.

How the batches travel: a CUDA tensor put on a `torch.multiprocessing` queue is sent as an IPC
handle, not copied (https://pytorch.org/docs/stable/notes/multiprocessing.html#sharing-cuda-tensors).
torch counts the consumer's references and keeps the producer's memory alive until the consumer
drops them, so a worker must outlive the consumer's use of its batches: workers wait for the
consumer's `done` before they exit. A worker finishes a batch (stream synchronised) before it
puts it on its queue, so the consumer may use it on any stream.

Order: batch i comes from worker i mod k through that worker's own bounded queue, so batches come
out in dataset order and a slow worker can never be overtaken into a deadlock (each queue holds
only its worker's batches).
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from calib.data.dataset import Dataset
from calib.data.loader import SkipLog
from calib.errors import CalibError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class WorkerBatch:
    """A batch a decode worker finished; `images` is None when none of its images decoded."""
    index: int
    images: "torch.Tensor | None"
    labels: np.ndarray
    keys: list[str]
    skipped: list[str]
    fallbacks: int = 0


def _decode_worker(rank: int, world: int, dataset: Dataset, batch_size: int, device: str, resample: str,
                   decoder: str, out, done, io_threads: int, factory=None) -> None:
    """Decode batches rank, rank + world, ... of `dataset` and put them on `out`, in order.
    `factory(preprocess, device, resample, decoder)` makes the decoder (default `GpuDecoder`)."""
    try:
        import contextlib

        import torch

        from calib.data.gpu_stream import read_items

        if factory is None:
            from calib.data.gpu_decode import GpuDecoder as factory
        torch.set_num_threads(1)
        dec = factory(dataset.preprocess, device, resample, decoder)
        stream = None
        if str(device).startswith("cuda"):
            torch.cuda.set_device(dec.device)
            stream = torch.cuda.Stream(device=dec.device)
        samples = dataset.samples
        indices = list(range(rank, (len(samples) + batch_size - 1) // batch_size, world))
        with ThreadPoolExecutor(io_threads, thread_name_prefix="calib-read") as pool:
            reads: deque = deque()
            todo = iter(indices)
            for index in todo:
                reads.append((index, pool.submit(read_items, dataset.source, samples[index * batch_size:(index + 1) * batch_size])))
                if len(reads) >= 2:
                    break
            while reads:
                index, future = reads.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    reads.append((nxt, pool.submit(read_items, dataset.source,
                                                   samples[nxt * batch_size:(nxt + 1) * batch_size])))
                chunk = samples[index * batch_size:(index + 1) * batch_size]
                before = dec.fallbacks
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    images, ok, bad = dec(future.result())
                if stream is not None:
                    stream.synchronize()   # finished before it is shared: the consumer may use any stream
                if not _put(out, WorkerBatch(index, images, np.asarray([chunk[i].label for i in ok], np.int64),
                                             [chunk[i].key for i in ok], [chunk[i].key for i in bad],
                                             dec.fallbacks - before), done):
                    break
                del images
    except BaseException as e:  # the consumer raises it
        first = (str(e).splitlines() or [""])[0][:300]
        _put(out, f"{type(e).__name__}: {first}", done)
    # The consumer may still hold this process's batches: they live as long as it does.
    done.wait()


def _put(out, item, done) -> bool:
    """Put `item` unless the consumer has said it is done (then False)."""
    while not done.is_set():
        try:
            out.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False


class DecodeWorkers:
    """`workers` processes decoding `dataset` on `device`; iterate `batches()` once.

    Start it early (e.g. before loading the models): the workers' start-up (interpreter, torch,
    CUDA context, nvJPEG) then overlaps with the caller's. Close it (or use it as a context
    manager) when done: that releases the workers."""

    def __init__(self, dataset: Dataset, batch_size: int, device: str, workers: int = 2,
                 resample: str = "pil", decoder: str = "nvjpeg", depth: int = 2, io_threads: int = 2,
                 timeout: float = 600.0, factory=None) -> None:
        import torch.multiprocessing as mp

        if workers < 1:
            raise CalibError(f"decode workers must be at least 1, not {workers}")
        if batch_size < 1:
            raise CalibError(f"batch size must be at least 1, not {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.count = (len(dataset.samples) + batch_size - 1) // batch_size
        self.workers = min(workers, max(self.count, 1))
        self.timeout = timeout
        self.fallbacks = 0
        ctx = mp.get_context("spawn")   # CUDA cannot be used in a forked child
        self._done = ctx.Event()
        self._queues = [ctx.Queue(maxsize=depth) for _ in range(self.workers)]
        self._procs = [ctx.Process(target=_decode_worker, name=f"calib-gpu-decode-{r}",
                                   args=(r, self.workers, dataset, batch_size, device, resample, decoder,
                                         self._queues[r], self._done, io_threads, factory), daemon=True)
                       for r in range(self.workers)]
        for p in self._procs:
            p.start()

    def _get(self, rank: int):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._queues[rank].get(timeout=0.5)
            except queue.Empty:
                proc = self._procs[rank]
                if not proc.is_alive():
                    raise CalibError(f"GPU decode worker {rank} died (exit code {proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise CalibError(f"GPU decode worker {rank} sent nothing for {self.timeout:.0f} s") from None

    def batches(self, skips: SkipLog | None = None, progress: str | None = None) -> Iterator[WorkerBatch]:
        """Decoded batches in dataset order (batches with no decodable image are skipped)."""
        from calib.progress import progress_bar

        skips = skips if skips is not None else SkipLog()
        bar = progress_bar(total=len(self.dataset.samples), desc=progress, unit="img", enabled=progress is not None)
        try:
            for index in range(self.count):
                item = self._get(index % self.workers)
                if isinstance(item, str):
                    raise CalibError(f"GPU decoding failed: {item}")
                if item.index != index:   # pragma: no cover - a bug, not the user's fault
                    raise AssertionError(f"decode worker sent batch {item.index}, expected {index}")
                skips.add(item.skipped)
                self.fallbacks += item.fallbacks
                bar.update(len(item.keys) + len(item.skipped))
                if item.images is not None:
                    yield item
                del item
        finally:
            bar.close()

    def close(self) -> None:
        self._done.set()
        for q in self._queues:      # unblock workers waiting to put: their batches are not wanted now
            try:
                while True:
                    q.get_nowait()
            except (queue.Empty, OSError, ValueError):
                pass
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def __enter__(self) -> "DecodeWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_decode_workers(images: int, batch_size: int) -> int:
    """Worker processes worth starting for `images`: none for a few batches (a worker's start-up,
    about as long as decoding a few thousand images, would not pay back), else 2 (leaves CPU
    cores for the consumer and its I/O; CALIB_GPU_DECODE_WORKERS overrides)."""
    env = os.environ.get("CALIB_GPU_DECODE_WORKERS")
    if env is not None:
        try:
            return max(0, int(env))
        except ValueError:
            raise CalibError(f"CALIB_GPU_DECODE_WORKERS must be a whole number, not '{env}'") from None
    return 0 if images < 16 * batch_size else 2
