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
