"""calib.placement: --device parsed once into a value the passes and runners ask."""

import pytest

from calib.errors import CalibError
from calib.placement import CPU, Placement, check_placement, resolve_placement


def test_a_placement_is_parsed_once():
    assert Placement.parse("cpu").devices == ("cpu",) and not Placement.parse("").on_gpu
    assert Placement.parse("cuda").devices == ("cuda:0",)
    assert Placement.parse("cuda:1").devices == ("cuda:1",) and not Placement.parse("cuda:1").several
    two = Placement.parse("cuda:0,1")
    assert two.devices == ("cuda:0", "cuda:1") and two.several and str(two) == "cuda:0,cuda:1"
    assert two.first == "cuda:0"
    for bad in ("gpu", "cuda:0,0", "cuda:a", "cuda:-1"):
        with pytest.raises(CalibError):
            Placement.parse(bad)


def test_the_cpu_is_the_default():
    assert Placement.parse(None) == CPU == Placement() and str(CPU) == "cpu" and CPU.first == "cpu"


def test_devices_are_parsed():
    assert resolve_placement("cpu") == CPU
    assert resolve_placement("cuda").devices == ("cuda:0",)
    assert resolve_placement("cuda:1").devices == ("cuda:1",)
    assert resolve_placement("cuda:0,1").devices == ("cuda:0", "cuda:1")
    for bad in ("gpu", "cuda:x", "cuda:0,0", "tpu:1"):
        with pytest.raises(CalibError):
            resolve_placement(bad)


def test_auto_falls_back_to_the_cpu_without_a_usable_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: auto picks it")
    assert resolve_placement("auto") == CPU


def test_a_gpu_run_is_refused_in_one_line_where_it_cannot_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CalibError) as info:
        check_placement("cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(CalibError, match="--backend ort"):
        check_placement("cuda:0,1", "tensorrt")


def test_device_auto_says_where_it_runs_and_why(monkeypatch):
    import torch

    from calib import onnx_io
    from calib.errors import Note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(Note, match="--device auto runs on the CPU: torch sees no CUDA GPU"):
        assert check_placement("auto") == CPU
    with pytest.warns(Note, match="runs on the CPU: --backend tensorrt-rtx runs its engines on the GPU by itself"):
        check_placement("auto", "tensorrt-rtx")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def no_provider():
        raise CalibError("onnxruntime-gpu is not installed")

    monkeypatch.setattr(onnx_io, "require_cuda_provider", no_provider)
    with pytest.warns(Note, match="runs on the CPU: ONNX Runtime cannot use the GPU: onnxruntime-gpu"):
        check_placement("auto")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Note)   # a device the user named is not a choice calib made
        check_placement("cpu")


def test_auto_under_torchrun_is_this_process_device_in_the_job(monkeypatch):
    # The check used to return auto's device outside the job while the passes ran inside it.
    import warnings

    import torch

    from calib.placement import Launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = check_placement("auto")
    assert checked == resolve_placement("auto", launch=Launch.from_env())
    assert checked.world == 2 and not checked.on_gpu
    with pytest.raises(CalibError, match="under torchrun the processes share ONNX Runtime's passes"):
        check_placement("cpu", "tensorrt-rtx")
