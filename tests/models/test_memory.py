"""calib.models.memory: the estimate a run's memory is checked with before any work (issue 22)."""

import pytest
from onnx import numpy_helper

from calib.errors import CalibError
from calib.models import memory
from calib.models.memory import MemoryNeed, check_memory, fit_batch, memory_need
from calib.onnx_io import load_model
from tests.conftest import make_classifier


def test_the_estimate_reads_images_activations_and_weights_from_the_graph(tmp_path):
    proto = load_model(make_classifier(tmp_path / "m.onnx", classes=10, size=16))
    need = memory_need(proto, (3, 16, 16))
    assert need.input == 3 * 16 * 16 * 4
    # Conv (8, 8, 8), Clip, depthwise Conv, Clip, Conv, Add: six (8, 8, 8) float tensors, then the pool,
    # the flattened vector and the logits: shape inference sized them all.
    assert need.activations == 4 * (6 * 8 * 8 * 8 + 8 + 8 + 10)
    assert need.weights == sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    # A dynamic size grows the estimate with the square of the side (the input-size 4000 case).
    big = memory_need(proto, (3, 160, 160))
    assert big.input == 100 * need.input and big.activations > 90 * need.activations
    assert list(proto.graph.input[0].type.tensor_type.shape.dim)[0].dim_param == "batch"  # left unchanged


def test_a_batch_that_does_not_fit_is_refused_in_one_line():
    need = MemoryNeed(weights=1_000_000, input=600_000, activations=2_400_000)
    check_memory(need, 10, "x", available=40_000_000)  # 31 MB: fits
    with pytest.raises(CalibError) as e:
        check_memory(need, 100_000, "timing at batch 100000", available=8_000_000_000)
    message = str(e.value)
    assert "\n" not in message and "timing at batch 100000 needs about 300.0 GB" in message
    assert "8.0 GB is available" in message and "use a batch of at most 2666" in message
    # On a GPU the host holds the images only.
    check_memory(need, 10_000, "x", activations=False, available=8_000_000_000)


def test_a_batch_that_does_not_fit_is_lowered_or_refused_when_not_even_one_image_fits():
    need = MemoryNeed(weights=0, input=1_000, activations=9_000)
    assert fit_batch(need, 32, "evaluation", available=10**6) == (32, None)
    batch, note = fit_batch(need, 32, "evaluation", available=100_000)
    assert batch == 10 and "running batches of 10" in note and "\n" not in note
    with pytest.raises(CalibError, match="for even one image .* smaller --input-size"):
        fit_batch(need, 32, "evaluation", available=5_000)


def test_available_memory_is_what_psutil_says():
    import psutil

    assert 0 < memory.available_memory() <= psutil.virtual_memory().total


def test_a_model_carries_its_estimate_at_the_shape_it_was_resolved_to(tmp_path):
    # Read once at intake: setup fits the batch sizes to it without parsing the file again.
    from calib.models import resolve_model
    from calib.models.memory import memory_need_arrays
    from tests.models.test_intake_arrays import _two_inputs

    path = make_classifier(tmp_path / "m.onnx", classes=10, size="side")   # dynamic H and W
    small, big = resolve_model(str(path), input_size=16), resolve_model(str(path), input_size=64)
    proto = load_model(path, external_data=False)
    assert small.need == memory_need(proto, (3, 16, 16)) and big.need == memory_need(proto, (3, 64, 64))
    assert big.need.input == 16 * small.need.input
    arrays = resolve_model(_two_inputs(tmp_path), input_shapes={"ids": (7,)}, arrays=True)
    assert arrays.need == memory_need_arrays(load_model(arrays.path, external_data=False), arrays.inputs)
    assert arrays.need.input == 7 * 8 + 7 * 8 + 4 * 4   # one sample: ids and mask int64 (7,), bias float32 (4,)
