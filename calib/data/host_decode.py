"""Preprocess batches in worker processes straight into shared, page-locked memory, with the CPU
path's pixels bit for bit: the first half of the GPU pipeline's exact decode path ("pil").

Each worker runs the CPU path's own preprocessing up to the normalisation (`source.open`, then
`Preprocess.pixels`: `to_rgb`, Pillow's crop and resize) and writes the uint8 (S, S, 3) crop into
its place in one of a few shared slots. The evaluating process copies a slot to the GPU in one
asynchronous copy (the slot is registered with CUDA as page-locked memory) and only normalises
there. So there is nothing to verify against the CPU path: it is the CPU path's code.

Why this split, measured on an H200 machine (16 cores) while the FP32 and INT8 models kept the
GPU busy (benchmarks/gpu.json):
- nvJPEG decoded about 1,400 images/s there (its kernels and host waits queue behind the
  models'); decoding threads in the evaluating process topped out near 2,600/s, because the
  thread that feeds the GPU waited for the GIL (profiled);
- workers that only decoded, with the resize on the GPU (the previous version of this module,
  `removed_pil_workers_gpu_resize`), fed 5,251 images/s next to the models, which fell from
  4,140 to 2,150 pairs/s. With the crop and resize in the workers: 6,473 images/s, and the
  models keep 2,817 pairs/s (`before_stream_and_padding`; 7,032 and 3,060 once the models'
  runners stopped waiting for the whole device). Fourteen niced processes that only spin, or
  only copy memory, next to the models leave them at 4,101 and 4,035 pairs/s against 4,094:
  CPU load as such is not what slows them.
- Pillow's resize costs little next to its decode on the CPU (0.07 ms against 0.5 ms for a
  sample photo, measured on a 2-core development machine), and the crop it leaves has fewer
  bytes to copy than the decoded image (224x224 against 341x256 for a sample photo, 500x375 for
  a typical ImageNet one).

The slots are anonymous shared memory made before the workers are forked, so they live outside
/dev/shm (small in containers); every image has its fixed place, so workers need no lock. Linux
only (fork), as the GPU path is.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import warnings
import weakref
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.data.cuda import to_device
from calib.data.loader import WorkerPool
from calib.data.sources import ImageSource, Sample
from calib.data.transforms import Preprocess
from calib.errors import CalibError, InternalError

if TYPE_CHECKING:  # pragma: no cover
    import torch


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
    tensor: Any = None      # the same memory as a uint8 (batch, S, S, 3) torch tensor (parent only, after fork)
    copied: Any = None      # CUDA event: the last copy out of this slot is done
    busy: bool = False      # submitted and not yet uploaded


# How much less CPU priority the workers take (nice): the threads that launch the models must get
# a core the moment they are runnable, or the GPU idles. Measured on an H200 machine with the
# previous decode-only workers, it did not change the models' rate (`pil_workers_before_nice` in
# benchmarks/gpu.json), and it costs nothing.
WORKER_NICE = 10


def _slot_rows(memory: mmap.mmap, size: int) -> np.ndarray:
    """A slot's memory as (batch, size, size, 3) uint8 rows."""
    return np.frombuffer(memory, np.uint8).reshape(-1, size, size, 3)


def _preprocess_into(source: ImageSource, preprocess: Preprocess, slots: list[_Slot], task) -> list:
    """In a worker: `task` = (slot, [(i, sample), ...]); each image's crop goes to row i of the
    slot. Returns the i of the images the CPU path could not decode (skipped there too)."""
    slot_index, items = task
    rows = _slot_rows(slots[slot_index].memory, preprocess.size)
    failed = []
    for i, sample in items:
        try:
            rows[i] = preprocess.pixels(source.open(sample))
        except Exception:   # corrupt or unsupported: skipped, as on the CPU path
            failed.append(i)
    return failed


@dataclass
class PendingBatch:
    """A batch the workers are preprocessing (`HostDecoder.submit`)."""
    slot: int
    tasks: list[int]
    count: int


class HostDecoder:
    """`workers` processes preprocessing `source`'s samples into `slots` shared slots (see the
    module docstring). `submit(samples)` starts a batch and returns at once; `upload(pending,
    device)` waits for it and returns (uint8 (k, S, S, 3) crops on `device`, or None when nothing
    decoded, and the indices of the k samples that did). At most `slots` batches may be
    submitted and not uploaded.

    Memory: `slots` x `batch_size` x S x S x 3 bytes of shared memory (39 MB per slot for batches
    of 256 at 224 x 224), registered with CUDA as page-locked while the decoder lives; `close()`
    (or the end of the object) stops the workers and releases it."""

    def __init__(self, source: ImageSource, preprocess: Preprocess, batch_size: int, workers: int | None = None,
                 slots: int = 4) -> None:
        if not sys.platform.startswith("linux"):
            raise CalibError("decoding into shared memory for the GPU needs Linux (fork); use --gpu-decode nvjpeg")
        import torch

        self.torch = torch
        self.size = preprocess.size
        self.workers = workers or default_gpu_workers()
        self.slots = [_Slot(mmap.mmap(-1, max(batch_size, 1) * self.size * self.size * 3)) for _ in range(slots)]
        self.next_slot = 0
        self.next_task = 0
        self.done: dict[int, list] = {}
        self.pinned: list[int] = []
        # The workers are forked before the slots are registered with CUDA: they inherit plain
        # shared memory, and nothing of CUDA's state is asked to survive the fork.
        self.pool = WorkerPool(self.workers, partial(_preprocess_into, source, preprocess, self.slots),
                               nice=WORKER_NICE)
        self._stop_workers = weakref.finalize(self, self.pool.close)   # also when never closed
        try:
            self._map()
        except BaseException:
            self.close()
            raise

    def _map(self) -> None:
        torch = self.torch
        for slot in self.slots:
            slot.tensor = torch.from_numpy(_slot_rows(slot.memory, self.size))
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
        slot.busy = True
        # A few tasks per worker: each task and result is a round trip through the queues.
        step = max(1, min(64, -(-len(samples) // (2 * self.workers))))
        tasks = []
        for start in range(0, len(samples), step):
            self.pool.submit(self.next_task, (index, list(enumerate(samples[start:start + step], start))))
            tasks.append(self.next_task)
            self.next_task += 1
        return PendingBatch(index, tasks, len(samples))

    def upload(self, pending: PendingBatch, device) -> tuple["torch.Tensor | None", list[int]]:
        """Wait for `pending`; copy its crops to `device` (asynchronous, on the current stream)."""
        torch = self.torch
        failed: set[int] = set()
        for task in pending.tasks:
            while task not in self.done:
                index, out = self.pool.get()
                self.done[index] = out
            failed.update(self.done.pop(task))
        slot = self.slots[pending.slot]
        slot.busy = False
        ok = [i for i in range(pending.count) if i not in failed]
        if not ok:
            return None, ok
        rows = slot.tensor[:pending.count]
        if device.type == "cuda":
            rows = rows.to(device, non_blocking=True)
            slot.copied = torch.cuda.Event()
            slot.copied.record()
        else:   # the slot is reused: a CPU batch must not be a view of it
            rows = rows.clone()
        if failed:   # the skipped images' rows hold whatever was there before
            rows = rows[to_device(np.asarray(ok, np.int64), rows.device)]
        return rows, ok


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
