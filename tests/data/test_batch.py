"""The one batch type (calib.data.batch.Batch): host and GPU streams hand out the same dataclass."""

from __future__ import annotations

import numpy as np

from calib.data.batch import Batch


def test_a_host_batch():
    images = np.zeros((2, 3, 4, 4), np.float32)
    batch = Batch(images, np.array([1, 2]), ["a", "b"])
    assert batch.size == 2 and batch.skipped == [] and batch.buffer is None and batch.ready is None


def test_one_type_wherever_it_is_imported_from():
    import calib.data
    from calib.data import gpu_stream, loader

    assert calib.data.Batch is Batch and loader.Batch is Batch and gpu_stream.Batch is Batch


def test_the_former_gpu_batch_name_keeps_its_positional_order():
    """Shim for callers outside calib.data: DeviceBatch(images, buffer, labels, keys, skipped, ready)."""
    import torch

    from calib.data.gpu_stream import DeviceBatch

    buffer = torch.zeros((4, 3, 2, 2))
    batch = DeviceBatch(buffer[:3], buffer, np.zeros(3, np.int64), ["a", "b", "c"])
    assert isinstance(batch, Batch) and batch.size == 3 and batch.buffer is buffer and batch.skipped == []
    assert batch.pointer == buffer.data_ptr()
    event = object()
    batch = DeviceBatch(buffer[:1], buffer, np.zeros(1, np.int64), ["a"], ["x"], event)
    assert batch.skipped == ["x"] and batch.ready is event
