"""Decode batches in worker processes straight into shared, page-locked memory, with the CPU
path's pixels bit for bit: the first half of the GPU pipeline's exact decode path ("pil").

Why processes, measured on an H200 machine (16 cores) while the FP32 and INT8 models kept the GPU
busy: nvJPEG decoded about 1,200-1,400 images/s (its kernels and host waits queue behind the
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
import warnings
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from calib.data.loader import WorkerPool
from calib.data.packed import PackedImages
from calib.data.sources import ImageSource, Sample
from calib.data.transforms import pil_rows
from calib.errors import CalibError, InternalError

# Room per image in a slot: a 640x480 photo (ImageNet's are smaller); larger ones still fit while
# the batch's total does. Slots hold at most this much each.
SLOT_BYTES_PER_IMAGE = 3 * 640 * 480
SLOT_CAP_BYTES = 1 << 30


def default_gpu_workers(share: int = 1) -> int:
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
    used: Any               # multiprocessing.Value('q'): bytes taken, under its lock
    tensor: Any = None      # the same memory as a uint8 torch tensor (parent only, after fork)
    copied: Any = None      # CUDA event: the last copy out of this slot is done
    busy: bool = False      # submitted and not yet uploaded


# How much less CPU priority the workers take (nice): the threads that launch the models must get
# a core the moment they are runnable, or the GPU idles. Measured on an H200 machine: 14 workers
# at the default priority fed 4,430 images/s while the models fell from 4,100 to 2,270 pairs/s;
# niced, 5,251/s and 2,151 pairs/s (benchmarks/gpu.json): it did not help there, and costs nothing.
WORKER_NICE = 10


def _decode_into(source: ImageSource, slots: list[_Slot], task) -> list:
    """In a worker: decode `task` = (slot, [(i, sample), ...]); per image (i, None) when the CPU
    path cannot decode it, (i, (base, h, w)) when written into the slot, else (i, rows)."""
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
    indices of the samples that did). At most `slots` batches may be submitted and not uploaded.

    Memory: `slots` x `batch_size` x 640x480x3 bytes of shared memory (236 MB per slot for batches
    of 256), registered with CUDA as page-locked while the decoder lives; `close()` (or the end of
    the object) stops the workers and releases it."""

    def __init__(self, source: ImageSource, batch_size: int, workers: int | None = None, slots: int = 4,
                 slot_bytes: int | None = None) -> None:
        if not sys.platform.startswith("linux"):
            raise CalibError("decoding into shared memory for the GPU needs Linux (fork); use --gpu-decode nvjpeg")
        import torch

        self.torch = torch
        self.workers = workers or default_gpu_workers()
        size = slot_bytes or min(max(batch_size, 1) * SLOT_BYTES_PER_IMAGE, SLOT_CAP_BYTES)
        ctx = mp.get_context("fork")
        self.slots = [_Slot(mmap.mmap(-1, size), ctx.Value("q", 0)) for _ in range(slots)]
        self.next_slot = 0
        self.next_task = 0
        self.done: dict[int, list] = {}
        self.pinned: list[int] = []
        # The workers are forked before the slots are registered with CUDA: they inherit plain
        # shared memory, and nothing of CUDA's state is asked to survive the fork.
        self.pool = WorkerPool(self.workers, partial(_decode_into, source, self.slots), nice=WORKER_NICE)
        self._stop_workers = weakref.finalize(self, self.pool.close)   # also when never closed
        try:
            self._map()
        except BaseException:
            self.close()
            raise

    def _map(self) -> None:
        torch = self.torch
        for slot in self.slots:
            slot.tensor = torch.frombuffer(slot.memory, dtype=torch.uint8)
            if torch.cuda.is_available():   # page-locked: the copy to the GPU is then asynchronous
                address = ctypes.addressof(ctypes.c_char.from_buffer(slot.memory))
                if int(torch.cuda.cudart().cudaHostRegister(address, len(slot.memory), 0)) == 0:
                    self.pinned.append(address)
                else:   # the failure is also left as CUDA's last error: clear it, copy from pageable memory
                    _clear_cuda_error()
                    if not self.pinned:
                        warnings.warn("could not page-lock the decode slots (cudaHostRegister failed): copies to "
                                      "the GPU are synchronous", stacklevel=4)

    def stop(self) -> None:
        """Stop the workers (a wait for a batch then fails within a second)."""
        self._stop_workers()

    def close(self) -> None:
        """Stop the workers, wait for the copies out of the slots, unregister them."""
        self.stop()
        for slot in self.slots:
            if slot.copied is not None:
                slot.copied.synchronize()   # on the slot's own device, whichever that is
                slot.copied = None
        for address in self.pinned:
            self.torch.cuda.cudart().cudaHostUnregister(address)
        self.pinned = []
        for slot in self.slots:
            slot.tensor = None

    def __enter__(self) -> "HostDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, samples: list[Sample]) -> PendingBatch:
        index = self.next_slot
        slot = self.slots[index]
        if slot.busy:
            raise InternalError(f"HostDecoder: more than {len(self.slots)} batches submitted and not uploaded")
        self.next_slot = (self.next_slot + 1) % len(self.slots)
        if slot.copied is not None:
            slot.copied.synchronize()   # the GPU has its previous batch
        slot.used.value = 0
        slot.busy = True
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
        torch = self.torch
        results: dict[int, object] = {}
        for task in pending.tasks:
            while task not in self.done:
                index, out = self.pool.get()
                self.done[index] = out
            results.update(self.done.pop(task))
        slot = self.slots[pending.slot]
        slot.busy = False
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
        if extra:   # rare (very large photos): a plain copy, no page-locked memory kept for it
            parts.append(torch.from_numpy(np.concatenate(extra)).to(device))
        flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        return PackedImages(flat, sizes, bases, [True] * len(ok)), ok


def _clear_cuda_error() -> None:
    """Reset CUDA's last error (torch's own kernel checks would otherwise report it later, as if
    their kernel had failed): cudaGetLastError from the CUDA runtime this process loaded."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libcudart" in line and "/" in line}
    for path in sorted(paths):
        try:
            ctypes.CDLL(path).cudaGetLastError()
            return
        except (OSError, AttributeError):
            continue
    raise CalibError("could not page-lock the GPU decode slots and could not clear the CUDA error it left; "
                     "use --gpu-decode nvjpeg")
