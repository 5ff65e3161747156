"""Preprocessed batches streamed into GPU memory: decode workers -> pinned host -> device.

Pipeline, per batch:

1. the decode workers of `iter_batches` (processes, bounded prefetch) produce a float32 NCHW
   numpy batch, exactly the batch the CPU path produces;
2. this process copies it into a page-locked ("pinned") host buffer;
3. a non-blocking host-to-device copy of that buffer is queued on a side CUDA stream, so it
   overlaps with whatever the consumer runs on its own stream.

There are `depth` (default 2) slots, each a pinned host buffer plus a fixed-size device buffer.
While the consumer holds the batch in one slot, the next batch is already being copied into
another (double buffering). Two CUDA events per slot keep the reuse safe without stalling:

- `copy_done`, recorded on the copy stream after the copy; the consumer's stream waits on it
  before the batch is handed out (GPU-side wait, the CPU does not block), and the CPU waits on
  it before it overwrites that slot's pinned buffer again;
- `released`, recorded on the consumer's stream when the consumer asks for the next batch; the
  copy stream waits on it before it overwrites that slot's device buffer, so kernels the
  consumer queued on the old batch finish first.

The buffers are allocated once and reused explicitly, never freed while in use, so
`Tensor.record_stream` (which protects tensors the caching allocator may free and hand out
again) is not needed: the events carry the ordering.

Why torch and not pycuda: torch is already a dependency of calib; its caching allocator,
`torch.cuda.Stream`, `torch.cuda.Event` and pinned tensors cover everything pycuda was used for
in TensorRT's samples (device allocations, streams, page-locked memory, async copies); and
pycuda ships no wheels for every CUDA version (it compiles against a local CUDA toolkit), while
the torch wheel that already runs the model carries its own CUDA runtime.

`gpu_batches` decodes on the GPU's side instead (a decoder of `calib.data.decoders.DECODERS`),
for consumers that need no stable pointer (ORT with IOBinding, the calibration statistics): a
producer thread with a CUDA stream of its own hands finished device batches over through a
bounded queue, with a CUDA event each. With `decoder="nvjpeg"` it reads the files (a small I/O
thread pool), decodes them with nvJPEG and preprocesses them on the GPU (`calib.data.gpu_decode`);
with `decoder="pil"` worker processes run the CPU path's preprocessing (Pillow decode, crop and
resize) into shared, page-locked slots (`calib.data.host_decode`), and the thread copies each
slot to the GPU and normalises there: the CPU path's pixels bit for bit.

A batch `GpuBatchStream` hands out is a view into a reused buffer: it is valid until the next
batch is asked for. Clone it to keep it. Use it on the stream that was current when it was handed out (or
record that stream's work before asking for the next batch), since that is the stream the
release event is recorded on.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from calib.data.batch import Batch
from calib.placement import require_torch_cuda
from calib.data.dataset import Dataset
from calib.data.host_decode import default_gpu_workers
from calib.data.loader import SkipLog, iter_batches
from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError


class _Slot:
    def __init__(self, torch, shape: tuple[int, ...], device) -> None:
        self.host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        self.host_array = self.host.numpy()   # the same pinned memory, for np.copyto
        self.device = torch.empty(shape, dtype=torch.float32, device=device)
        self.copy_done = torch.cuda.Event()
        self.released = torch.cuda.Event()
        self.copied = False     # copy_done has been recorded at least once
        self.was_released = False


class GpuBatchStream:
    """Stream `dataset` to the GPU in batches of `batch_size`, in dataset order.

    Iterate it for `Batch`es on the device (each pass decodes the dataset again), or call `get_batch()`
    repeatedly for TensorRT-style (pointer, valid count) pairs. Undecodable images are skipped
    and logged in `skips`, as in `iter_batches`; the last batch (or one with skipped images)
    may hold fewer than `batch_size` images: `Batch.size` tells; `Batch.buffer` is the whole slot.

    The batches are the CPU path's (`iter_batches`' decode workers), copied up: TensorRT's
    calibrators and `decoder="cpu"` runs on a GPU take them (`gpu_batches` decodes on the GPU).
    """

    def __init__(self, dataset: Dataset, batch_size: int, workers: int | None = None,
                 device: str = "cuda", depth: int = 2, progress: str | None = None,
                 skips: SkipLog | None = None) -> None:
        if batch_size < 1:
            raise CalibError(f"batch size must be at least 1, not {batch_size}")
        if depth < 2:
            raise CalibError(f"GPU stream depth must be at least 2 (double buffering), not {depth}")
        self._torch, self.device = require_torch_cuda(device)
        self.dataset = dataset
        self.batch_size = batch_size
        self.workers = workers
        self.depth = depth
        self.progress = progress
        self.skips = skips if skips is not None else SkipLog()
        self._copy_stream = self._torch.cuda.Stream(device=self.device)
        self._pass: Iterator[Batch] | None = None   # the pass get_batch() walks
        self.current: Batch | None = None            # what get_batch() returned last
        self.images = 0                                     # images handed out in this pass

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        return self._batches()

    def get_batch(self) -> tuple[int, int] | None:
        """The next batch as (device pointer, valid count), None at the end.

        The pointer addresses a fixed-size (batch_size, C, H, W) float32 buffer whose first
        `valid count` rows hold images (the rest are zero); it stays valid until the next call.
        The copy has completed when this returns, so any stream (TensorRT's own) may read it.
        """
        if self._pass is None:
            self._pass = self._batches()
        batch = next(self._pass, None)
        self.current = batch
        if batch is None:
            self._pass = None
            return None
        # TensorRT reads the buffer on a stream of its own that we cannot order against:
        # wait (on the CPU) until the copy is complete before handing out the address.
        batch.ready.synchronize()
        return batch.pointer, batch.size

    def reset(self) -> None:
        """Restart get_batch() from the first image."""
        if self._pass is not None:
            self._pass.close()
        self._pass = None
        self.current = None

    def close(self) -> None:
        self.reset()
        self._copy_stream.synchronize()
        self._torch.cuda.current_stream(self.device).synchronize()

    def __enter__(self) -> "GpuBatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pipeline ----------------------------------------------------------------------------

    def _batches(self) -> Iterator[Batch]:
        source = iter_batches(self.dataset, self.batch_size, self.workers, progress=self.progress,
                              skips=self.skips)
        pending: deque[tuple[_Slot, Batch]] = deque()
        slots: list[_Slot] = []   # each pass owns its buffers: two passes never share a slot
        count = 0
        self.images = 0
        try:
            for batch in source:
                slot = self._slot(slots, count, batch.images.shape[1:])
                count += 1
                self._fill(slot, batch)
                pending.append((slot, batch))
                if len(pending) == self.depth:   # every slot is busy: hand out the oldest
                    out_slot, out_batch = pending.popleft()
                    yield self._hand_out(out_slot, out_batch)
                    self._release(out_slot)
            while pending:
                slot, batch = pending.popleft()
                yield self._hand_out(slot, batch)
                self._release(slot)
        finally:
            source.close()  # stops the decode pool
            if slots:       # nothing may still be copying into buffers about to be dropped
                self._copy_stream.synchronize()

    def _slot(self, slots: list[_Slot], index: int, chw: tuple[int, ...]) -> _Slot:
        shape = (self.batch_size, *chw)
        if not slots:
            slots.extend(_Slot(self._torch, shape, self.device) for _ in range(self.depth))
        elif tuple(slots[0].device.shape) != shape:
            raise CalibError(f"batches changed shape mid-stream: {tuple(slots[0].device.shape[1:])} "
                             f"then {tuple(chw)}")
        return slots[index % self.depth]

    def _fill(self, slot: _Slot, batch: Batch) -> None:
        torch = self._torch
        n = len(batch.keys)
        if slot.copied:
            slot.copy_done.synchronize()   # the last copy out of this pinned buffer has finished
        # One thread, GIL released: torch's copy_ would fan out to every intra-op thread and take
        # CPU from the decode workers and the thread that reads their results (measured: ~10% of
        # the stream's rate on a 16-core machine).
        np.copyto(slot.host_array[:n], batch.images, casting="no")
        with torch.cuda.stream(self._copy_stream):
            if slot.was_released:
                self._copy_stream.wait_event(slot.released)  # the consumer's kernels on it are done
            slot.device[:n].copy_(slot.host[:n], non_blocking=True)
            if n < self.batch_size:
                slot.device[n:].zero_()
            slot.copy_done.record(self._copy_stream)
        slot.copied = True

    def _hand_out(self, slot: _Slot, batch: Batch) -> Batch:
        n = len(batch.keys)
        self._torch.cuda.current_stream(self.device).wait_event(slot.copy_done)
        self.images += n
        return Batch(slot.device[:n], batch.labels, batch.keys, batch.skipped, buffer=slot.device,
                     ready=slot.copy_done)

    def _release(self, slot: _Slot) -> None:
        slot.released.record(self._torch.cuda.current_stream(self.device))
        slot.was_released = True


# --------------------------------------------------------------------------- GPU decoding
def _reads_files(source: ImageSource) -> bool:
    """Sources whose samples are files opened by path (the base class's `open`)."""
    return type(source).open is ImageSource.open


def read_items(source: ImageSource, samples: list[Sample]) -> list:
    """Encoded bytes per sample for file sources; otherwise a callable that opens it (PIL)."""
    if not _reads_files(source):
        return [(lambda s=s: source.open(s)) for s in samples]
    items: list = []
    for s in samples:
        try:
            with open(s.key, "rb") as f:
                items.append(f.read())
        except OSError:
            items.append(b"")   # unreadable: skipped by the decoder like an undecodable file
    return items


class _DecodeThread:
    """Decoded device batches in dataset order, through a bounded queue, from a thread with its
    own CUDA stream. nvJPEG: read (I/O threads) -> decode + preprocess on the GPU. Pillow
    (`decoder="pil"`): the CPU path's preprocessing in worker processes, into shared memory
    (`calib.data.host_decode`), then one copy to the GPU and the normalisation there; with
    `workers=0` in this process instead, image by image (slow: for debugging)."""

    _END = object()

    def __init__(self, dataset: Dataset, batch_size: int, device, depth: int = 3, io_threads: int = 4,
                 progress: str | None = None, decoder: str = "nvjpeg", workers: int | None = None) -> None:
        from calib.data.gpu_decode import GpuDecoder

        self.dataset = dataset
        self.chunks = [dataset.samples[i:i + batch_size] for i in range(0, len(dataset.samples), batch_size)]
        self.decoder = GpuDecoder(dataset.preprocess, str(device), decoder)
        self.device = self.decoder.device
        self.io_threads = io_threads
        self.depth = depth
        self.progress = progress
        self.batch_size = batch_size
        # Decode processes: never more than the images keep busy (a few batches' worth of tasks).
        self.workers = None if decoder != "pil" or workers == 0 else max(1, min(
            workers or default_gpu_workers(), -(-len(dataset.samples) // 32)))
        self.host = None   # the HostDecoder, while batches() runs
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _work(self) -> None:
        torch = self.decoder.torch
        try:
            torch.cuda.set_device(self.device)
            # High priority: when the models keep every SM busy, the decoder's kernels are
            # scheduled first as blocks retire, so the next batch is ready when they want it.
            stream = torch.cuda.Stream(device=self.device, priority=-1)
            if self.host is not None:
                self._from_workers(stream)
            else:
                self._in_this_process(stream)
        except BaseException as e:  # re-raised in the consumer
            self._put(e)
            return
        self._put(self._END)

    def _in_this_process(self, stream) -> None:
        torch = self.decoder.torch
        source = self.dataset.source
        with ThreadPoolExecutor(self.io_threads, thread_name_prefix="calib-read") as pool:
            pending: deque = deque()
            todo = iter(self.chunks)
            for chunk in todo:
                pending.append((chunk, pool.submit(read_items, source, chunk)))
                if len(pending) > self.depth:
                    break
            while pending and not self.stop.is_set():
                chunk, future = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(read_items, source, nxt)))
                items = future.result()
                with torch.cuda.stream(stream):
                    images, ok, bad = self.decoder(items)
                self._hand_over(stream, chunk, images, ok)

    def _from_workers(self, stream) -> None:
        torch = self.decoder.torch
        host = self.host
        pending: deque = deque()
        todo = iter(self.chunks)
        for chunk in todo:   # the workers decode `depth` batches ahead of the GPU
            pending.append((chunk, host.submit(chunk)))
            if len(pending) >= self.depth:
                break
        while pending and not self.stop.is_set():
            chunk, started = pending.popleft()
            with torch.cuda.stream(stream):
                rows, ok = host.upload(started, self.device)
                images = self.decoder.from_crops(rows) if rows is not None else None
            nxt = next(todo, None)
            if nxt is not None:   # its slot is free once the copy just queued is done
                pending.append((nxt, host.submit(nxt)))
            self._hand_over(stream, chunk, images, ok)

    def _hand_over(self, stream, chunk, images, ok: list[int]) -> None:
        torch = self.decoder.torch
        event = torch.cuda.Event()
        event.record(stream)
        bad = sorted(set(range(len(chunk))) - set(ok))
        self._put(Batch(images, np.asarray([chunk[i].label for i in ok], np.int64),
                        [chunk[i].key for i in ok], [chunk[i].key for i in bad], ready=event))

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def batches(self, skips: SkipLog) -> Iterator[Batch]:
        """Finished batches (images may be None when no image of a chunk decoded: skipped)."""
        from calib.progress import progress_bar

        bar = progress_bar(total=len(self.dataset.samples), desc=self.progress, unit="img",
                           enabled=self.progress is not None)
        try:
            if self.workers is not None and self.chunks:
                from calib.data.host_decode import HostDecoder

                # Forked here, in the consumer's thread, before this object's own thread exists.
                # Slots: `depth` batches ahead plus the one whose copy to the GPU may be in flight.
                self.host = HostDecoder(self.dataset.source, self.dataset.preprocess, self.batch_size, self.workers,
                                        slots=self.depth + 1)
            self.thread = threading.Thread(target=self._work, name="calib-gpu-decode", daemon=True)
            self.thread.start()
            while True:
                item = self.queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                skips.add(item.skipped)
                bar.update(len(item.keys) + len(item.skipped))
                if item.images is not None:
                    yield item
        finally:
            bar.close()
            self.close()

    def close(self) -> None:
        """Stop: the workers first (a thread waiting for their batch then fails at once), then
        the thread, then the slots (after their copies to the GPU)."""
        self.stop.set()
        if self.host is not None:
            self.host.stop()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.host is not None:
            self.host.close()
            self.host = None


def gpu_batches(dataset: Dataset, batch_size: int, device: str = "cuda", *, depth: int = 3, io_threads: int = 4,
                progress: str | None = None, skips: SkipLog | None = None, decoder: str = "nvjpeg",
                workers: int | None = None) -> Iterator[Batch]:
    """Batches decoded and preprocessed on the GPU (nvJPEG; Pillow per image where nvJPEG cannot),
    in dataset order, as `Batch`es whose `images` are ready on the caller's current stream.

    Each batch is a fresh tensor (the caching allocator recycles them), valid for as long as the
    caller keeps it. `decoder="pil"` runs the CPU path's preprocessing in `workers` processes
    (`calib.data.host_decode`; 0: in this process) and normalises on the GPU: the CPU path's
    pixels, bit for bit. Undecodable images are logged in `skips`."""
    skips = skips if skips is not None else SkipLog()
    producer = _DecodeThread(dataset, batch_size, device, depth, io_threads, progress, decoder, workers)
    torch = producer.decoder.torch
    current = torch.cuda.current_stream(producer.device)
    batches = producer.batches(skips)
    try:
        for item in batches:
            current.wait_event(item.ready)
            item.images.record_stream(current)  # freed only after the caller's work on it
            item.buffer = item.images
            yield item
    finally:
        # Closing this generator must stop the decoder now: Python 3.12 does not always finalise
        # a generator suspended in another one's loop when the outer one is closed (gh-118272).
        batches.close()
