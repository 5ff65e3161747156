"""GPU decoding in worker processes: each decodes every k-th batch on the same GPU and hands the
finished device batch to the consumer through CUDA IPC.

Why processes: in one process the decode thread shares the interpreter lock and the CPU with
whatever runs the models, and torchvision's nvJPEG call is synchronous (a global mutex and
`cudaStreamSynchronize` per call, `torchvision/csrc/io/image/cuda/decode_jpegs_cuda.cpp`), so a
decode thread and the model runs measured one after the other instead of side by side
(benchmarks/RESULTS.md, "GPU"). A worker process has its own interpreter and its own nvJPEG
state; several of them decode batches in parallel while the consumer only runs models.

How the batches travel: each worker allocates a small ring of fixed-size batch buffers ("slots")
once and shares them with the consumer once, as CUDA IPC handles through a `torch.multiprocessing`
queue (https://pytorch.org/docs/stable/notes/multiprocessing.html#sharing-cuda-tensors); opening
a handle is slow, so it is never done per batch (a first version that sent every batch as a new
tensor decoded 1,447 images/s where the thread decodes 12,718). Per batch only a few numbers
travel: the worker copies the batch into a free slot on its stream and records that slot's
interprocess CUDA event; the consumer's stream waits on that event (no CPU wait) and, when the
consumer asks for the next batch, it synchronises its stream and hands the slot back on the
worker's `free` queue. A slot is therefore valid until the next batch is asked for.

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
    """A batch a decode worker finished; `images` is None when none of its images decoded.
    `slot` and `size` say where the images are (the consumer attaches `images`)."""
    index: int
    images: "torch.Tensor | None"
    labels: np.ndarray
    keys: list[str]
    skipped: list[str]
    fallbacks: int = 0
    slot: int = -1
    size: int = 0


def _decode_worker(rank: int, world: int, dataset: Dataset, batch_size: int, device: str, resample: str,
                   decoder: str, out, free, done, io_threads: int, slots: int, factory=None) -> None:
    """Decode batches rank, rank + world, ... of `dataset` into this worker's slots and announce
    them on `out`, in order. `factory(preprocess, device, resample, decoder)` makes the decoder
    (default `GpuDecoder`)."""
    try:
        import contextlib

        import torch

        from calib.data.gpu_stream import read_items

        if factory is None:
            from calib.data.gpu_decode import GpuDecoder as factory
        torch.set_num_threads(1)
        dec = factory(dataset.preprocess, device, resample, decoder)
        size = dataset.preprocess.size
        shape = (batch_size, 3, size, size)
        stream, events = None, None
        if str(device).startswith("cuda"):
            torch.cuda.set_device(dec.device)
            stream = torch.cuda.Stream(device=dec.device)
            ring = [torch.zeros(shape, dtype=torch.float32, device=dec.device) for _ in range(slots)]
            events = [torch.cuda.Event(interprocess=True) for _ in range(slots)]
            torch.cuda.synchronize(dec.device)
            handles = [e.ipc_handle() for e in events]
        else:   # CPU tensors in shared memory (the tests' path)
            ring = [torch.zeros(shape, dtype=torch.float32).share_memory_() for _ in range(slots)]
            handles = None
        if not _put(out, ("slots", ring, handles), done):
            return
        available = deque(range(slots))
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
                    slot, n = -1, 0
                    if images is not None:
                        if not available:
                            got = _get_free(free, done)
                            if got is None:
                                break
                            available.append(got)
                        slot, n = available.popleft(), int(images.shape[0])
                        ring[slot][:n].copy_(images)
                        if events is not None:
                            events[slot].record(stream)
                    del images
                if not _put(out, WorkerBatch(index, None, np.asarray([chunk[i].label for i in ok], np.int64),
                                             [chunk[i].key for i in ok], [chunk[i].key for i in bad],
                                             dec.fallbacks - before, slot, n), done):
                    break
    except BaseException as e:  # the consumer raises it
        first = (str(e).splitlines() or [""])[0][:300]
        _put(out, f"{type(e).__name__}: {first}", done)
    # The consumer holds this process's slots: they live as long as it does.
    done.wait()


def _get_free(free, done) -> int | None:
    """The next slot the consumer handed back, or None once it is done."""
    while not done.is_set():
        try:
            return free.get(timeout=0.5)
        except queue.Empty:
            continue
    return None


def _put(out, item, done) -> bool:
    """Put `item` unless the consumer has said it is done (then False)."""
    if done.is_set():
        return False
    out.put(item)
    return True


class DecodeWorkers:
    """`workers` processes decoding `dataset` on `device`; iterate `batches()` once.

    Start it early (e.g. before loading the models): the workers' start-up (interpreter, torch,
    CUDA context, nvJPEG) then overlaps with the caller's. Close it (or use it as a context
    manager) when done: that releases the workers."""

    def __init__(self, dataset: Dataset, batch_size: int, device: str, workers: int = 2,
                 resample: str = "pil", decoder: str = "nvjpeg", slots: int = 3, io_threads: int = 2,
                 timeout: float = 600.0, factory=None) -> None:
        import torch.multiprocessing as mp

        if workers < 1:
            raise CalibError(f"decode workers must be at least 1, not {workers}")
        if batch_size < 1:
            raise CalibError(f"batch size must be at least 1, not {batch_size}")
        if slots < 2:
            raise CalibError(f"a decode worker needs at least 2 slots, not {slots}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.count = (len(dataset.samples) + batch_size - 1) // batch_size
        self.workers = min(workers, max(self.count, 1))
        self.timeout = timeout
        self.fallbacks = 0
        ctx = mp.get_context("spawn")   # CUDA cannot be used in a forked child
        self._done = ctx.Event()
        self._queues = [ctx.Queue() for _ in range(self.workers)]
        self._free = [ctx.Queue() for _ in range(self.workers)]
        self._rings: list = [None] * self.workers
        self._events: list = [None] * self.workers
        self._procs = [ctx.Process(target=_decode_worker, name=f"calib-gpu-decode-{r}",
                                   args=(r, self.workers, dataset, batch_size, device, resample, decoder,
                                         self._queues[r], self._free[r], self._done, io_threads, slots, factory),
                                   daemon=True)
                       for r in range(self.workers)]
        for p in self._procs:
            p.start()

    def _get(self, rank: int):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                item = self._queues[rank].get(timeout=0.5)
            except (queue.Empty, OSError, EOFError) as e:   # OSError: it died while its memory was being shared
                proc = self._procs[rank]
                proc.join(timeout=0 if isinstance(e, queue.Empty) else 5)
                if not proc.is_alive():
                    raise CalibError(f"GPU decode worker {rank} died (exit code {proc.exitcode})") from None
                if not isinstance(e, queue.Empty):
                    raise CalibError(f"GPU decode worker {rank}: {type(e).__name__}: {e}") from None
                if time.monotonic() > deadline:
                    raise CalibError(f"GPU decode worker {rank} sent nothing for {self.timeout:.0f} s") from None
                continue
            if isinstance(item, str):
                raise CalibError(f"GPU decoding failed: {item}")
            if isinstance(item, tuple) and item[0] == "slots":   # once per worker, before its batches
                self._rings[rank] = item[1]
                if item[2] is not None:
                    import torch

                    dev = item[1][0].device
                    self._events[rank] = [torch.cuda.Event.from_ipc_handle(dev, h) for h in item[2]]
                continue
            return item

    def batches(self, skips: SkipLog | None = None, progress: str | None = None) -> Iterator[WorkerBatch]:
        """Decoded batches in dataset order (batches with no decodable image are skipped). A
        batch's `images` are a view of a worker's slot: valid until the next batch is asked for."""
        from calib.progress import progress_bar

        skips = skips if skips is not None else SkipLog()
        bar = progress_bar(total=len(self.dataset.samples), desc=progress, unit="img", enabled=progress is not None)
        held: tuple[int, int] | None = None   # (rank, slot) the consumer is using
        try:
            for index in range(self.count):
                rank = index % self.workers
                item = self._get(rank)
                if held is not None:
                    self._release(*held)
                    held = None
                if item.index != index:   # pragma: no cover - a bug, not the user's fault
                    raise AssertionError(f"decode worker sent batch {item.index}, expected {index}")
                skips.add(item.skipped)
                self.fallbacks += item.fallbacks
                bar.update(len(item.keys) + len(item.skipped))
                if item.slot < 0:
                    continue
                slot = self._rings[rank][item.slot]
                if self._events[rank] is not None:
                    import torch

                    torch.cuda.current_stream(slot.device).wait_event(self._events[rank][item.slot])
                item.images = slot[:item.size]
                held = (rank, item.slot)
                yield item
        finally:
            bar.close()

    def _release(self, rank: int, slot: int) -> None:
        """Hand a slot back once everything the consumer queued on it has run."""
        ring = self._rings[rank]
        if ring is not None and ring[slot].is_cuda:
            import torch

            torch.cuda.current_stream(ring[slot].device).synchronize()
        self._free[rank].put(slot)

    def close(self) -> None:
        self._rings = [None] * self.workers    # the consumer's references to the workers' memory
        self._events = [None] * self.workers
        self._done.set()
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
