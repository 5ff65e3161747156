"""Decode batches in worker processes straight into shared, page-locked memory, with the CPU
path's pixels bit for bit: the first half of the GPU pipeline's exact decode path ("pil").

Why processes, measured on an H200 machine (16 cores) while the FP32 and INT8 models kept the GPU
busy: nvJPEG decoded about 1,200-2,100 images/s (its kernels and host waits queue behind the
models'), and decoding threads in the evaluating process topped out near 2,600/s even with
libjpeg-turbo releasing the GIL, because each image costs a few GIL hand-offs and with 14
threads contending the thread that feeds the GPU waited ~100 ms per batch for the GIL (profiled).
Worker processes have their own GIL; they decode exactly as the CPU path does (`source.open`
and `to_rgb`, Pillow), so there is nothing to verify against it, and write the interleaved
(H, W, 3) rows into one of a few shared slots. The evaluating process only receives a few
numbers per image, copies the slot to the GPU in one asynchronous copy (the slot is registered
with CUDA as page-locked memory) and resizes there (calib.data.resample_kernel reads the
interleaved rows through their strides). Measured there: 7,760 images/s alone, 5,251/s while the
models run; FP32+INT8 end to end 3,288 images/s against nvJPEG's 3,192 (the workers keep up but
slow the models' launching threads; benchmarks/RESULTS.md, "GPU").

The slots are anonymous shared memory made before the workers are forked, so they live outside
/dev/shm (small in containers). Each slot has a bump counter in shared memory: a worker takes
room for an image under its lock. An image that does not fit (a batch of very large photos)
travels back through the result queue instead: slower, same pixels. Linux only (fork), as the
GPU path is.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from functools import partial

import numpy as np

from calib.data.loader import WorkerPool
from calib.data.packed import PackedImages
from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError

# Room per image in a slot: a 640x480 photo (ImageNet's are smaller); larger ones still fit while
# the batch's total does. Slots hold at most this much each.
SLOT_BYTES_PER_IMAGE = 3 * 640 * 480
SLOT_CAP_BYTES = 1 << 30


def pil_pixels(image) -> np.ndarray:
    """A PIL image as the CPU path sees it (plain RGB), uint8 (3, H, W)."""
    return np.ascontiguousarray(pil_rows(image).transpose(2, 0, 1))


def pil_rows(image) -> np.ndarray:
    """A PIL image as the CPU path sees it (plain RGB), uint8 (H, W, 3) rows."""
    from calib.data.transforms import to_rgb

    return np.asarray(to_rgb(image), dtype=np.uint8)


def default_workers(share: int = 1) -> int:
    """Decode processes for one of `share` GPUs of this machine: its cores, less two per GPU (the
    threads that launch the models and feed the batches), split between the GPUs."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, (cores - 2 * share) // max(share, 1))


@dataclass
class _Slot:
    memory: mmap.mmap
    used: object            # multiprocessing.Value('q'): bytes taken, under its lock
    tensor: object = None   # the same memory as a uint8 torch tensor (parent only, after fork)
    copied: object = None   # CUDA event: the last copy out of this slot is done


# How much less CPU priority the workers take (nice): the threads that launch the models must get
# a core the moment they are runnable, or the GPU idles. Measured on an H200 machine: 14 workers
# at the default priority fed 4,430 images/s while the models fell from 4,100 to 2,270 pairs/s.
WORKER_NICE = 10
_niced: list[bool] = []


def _lower_priority() -> None:
    if not _niced:
        _niced.append(True)
        try:
            os.nice(WORKER_NICE)
        except OSError:   # pragma: no cover - not allowed here: run at the same priority
            pass


def _decode_into(source: ImageSource, slots: list[_Slot], task) -> list:
    """In a worker: decode `task` = (slot, [(i, sample), ...]); per image (i, None) when the CPU
    path cannot decode it, (i, (base, h, w)) when written into the slot, else (i, rows)."""
    _lower_priority()
    slot_index, items = task
    slot = slots[slot_index]
    capacity = len(slot.memory)
    out = []
    for i, sample in items:
        try:
            rows = pil_rows(source.open(sample))
        except Exception:   # corrupt or unsupported: skipped, as on the CPU path
            out.append((i, None))
            continue
        n = rows.size
        with slot.used.get_lock():
            base = slot.used.value
            fits = base + n <= capacity
            if fits:
                slot.used.value = base + n
        if not fits:
            out.append((i, rows))
            continue
        np.frombuffer(slot.memory, np.uint8, n, base)[:] = rows.reshape(-1)
        out.append((i, (base, rows.shape[0], rows.shape[1])))
    return out


@dataclass
class PendingBatch:
    """A batch the workers are decoding (`HostDecoder.submit`)."""
    slot: int
    tasks: list[int]
    count: int


class HostDecoder:
    """`workers` processes decoding `source`'s samples into `slots` shared slots (see the module
    docstring). `submit(samples)` starts a batch and returns at once; `upload(pending, device)`
    waits for it and returns (a `PackedImages` on `device`, or None when nothing decoded, and the
    indices of the samples that did). Keep fewer than `slots` batches submitted and not uploaded."""

    def __init__(self, source: ImageSource, batch_size: int, workers: int | None = None, slots: int = 5,
                 slot_bytes: int | None = None) -> None:
        if not sys.platform.startswith("linux"):
            raise CalibError("decoding into shared memory for the GPU needs Linux (fork); use the nvjpeg decoder")
        self.workers = workers or default_workers()
        size = slot_bytes or min(max(batch_size, 1) * SLOT_BYTES_PER_IMAGE, SLOT_CAP_BYTES)
        ctx = mp.get_context("fork")
        self.slots = [_Slot(mmap.mmap(-1, size), ctx.Value("q", 0)) for _ in range(slots)]
        self.next_slot = 0
        self.next_task = 0
        self.done: dict[int, list] = {}
        self.pinned: list[int] = []
        # Fork first: memory registered with CUDA is not handed to forked children.
        self.pool = WorkerPool(self.workers, partial(_decode_into, source, self.slots))
        try:
            self._map()
        except BaseException:
            self.close()
            raise

    def _map(self) -> None:
        import torch

        for slot in self.slots:
            slot.tensor = torch.frombuffer(slot.memory, dtype=torch.uint8)
            if torch.cuda.is_available():   # page-locked: the copy to the GPU is then asynchronous
                address = ctypes.addressof(ctypes.c_char.from_buffer(slot.memory))
                if int(torch.cuda.cudart().cudaHostRegister(address, len(slot.memory), 0)) == 0:
                    self.pinned.append(address)

    def close(self) -> None:
        self.pool.close()
        if self.pinned:
            import torch

            torch.cuda.synchronize()
            for address in self.pinned:
                torch.cuda.cudart().cudaHostUnregister(address)
            self.pinned = []
        for slot in self.slots:
            slot.tensor = None
        # The mmaps go with this object (a tensor view may still hold one until it is collected).

    def __enter__(self) -> "HostDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, samples: list[Sample]) -> PendingBatch:
        index = self.next_slot
        self.next_slot = (self.next_slot + 1) % len(self.slots)
        slot = self.slots[index]
        if slot.copied is not None:
            slot.copied.synchronize()   # the GPU has its previous batch
        slot.used.value = 0
        # A few tasks per worker: each task and result is a round trip through the queues.
        step = max(1, min(64, -(-len(samples) // (2 * self.workers))))
        tasks = []
        for start in range(0, len(samples), step):
            self.pool.submit(self.next_task, (index, list(enumerate(samples[start:start + step], start))))
            tasks.append(self.next_task)
            self.next_task += 1
        return PendingBatch(index, tasks, len(samples))

    def upload(self, pending: PendingBatch, device) -> tuple[PackedImages | None, list[int]]:
        """Wait for `pending`; copy its pixels to `device` (asynchronous, on the current stream)."""
        import torch

        from calib.data.cuda import to_device

        results: dict[int, object] = {}
        for task in pending.tasks:
            while task not in self.done:
                index, out = self.pool.get()
                self.done[index] = out
            results.update(self.done.pop(task))
        slot = self.slots[pending.slot]
        ok = [i for i in range(pending.count) if results.get(i) is not None]
        if not ok:
            return None, ok
        used = slot.used.value
        sizes, bases = [], []
        extra, offset = [], used
        for i in ok:
            r = results[i]
            if isinstance(r, tuple):
                sizes.append((r[1], r[2]))
                bases.append(r[0])
            else:   # did not fit in the slot: appended after it
                sizes.append((int(r.shape[0]), int(r.shape[1])))
                bases.append(offset)
                offset += r.size
                extra.append(r.reshape(-1))
        parts = []
        if used and device.type == "cuda":
            parts.append(slot.tensor[:used].to(device, non_blocking=True))
            slot.copied = torch.cuda.Event()
            slot.copied.record()
        elif used:   # the slot is reused: a CPU batch must not be a view of it
            parts.append(slot.tensor[:used].clone())
        if extra:
            parts.append(to_device(np.concatenate(extra), device))
        flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        return PackedImages(flat, sizes, bases, [True] * len(ok)), ok
