"""The session: devices parsed and checked before any work, the decode path in the cache key."""

import pytest

from calib.errors import CalibError
from calib.placement import CPU, Placement
from calib.session import RunConfig, check_config


def test_the_decode_path_is_part_of_the_cache_key(tmp_path, tiny_classifier):
    """A cache from the GPU decode path is never reused by the CPU path, and the CPU path's key is
    the one it always had (caches made before GPU decoding keep their keys)."""
    from calib.calibration import cache_key, decode_for
    from calib.calibrators import get_calibrator
    from calib.data.plan import plan_data
    from calib.models import resolve_model

    model = resolve_model(str(tiny_classifier))
    data = plan_data("demo", None, model.preprocess, 8)
    cal = get_calibrator("minmax")
    cpu = cache_key(model, data.calibration, cal, decode_for(model.preprocess, CPU))
    gpu = cache_key(model, data.calibration, cal, decode_for(model.preprocess, Placement((0,))))
    assert decode_for(model.preprocess, CPU) == "pil"
    assert decode_for(model.preprocess, Placement((0,))).startswith("nvjpeg")
    assert cpu == cache_key(model, data.calibration, cal) and cpu.digest() != gpu.digest()
    # --gpu-decode pil gives the CPU path's pixels, so it shares the CPU path's key.
    assert decode_for(model.preprocess, Placement((0,)), "pil") == "pil"
    assert decode_for(model.preprocess, Placement((0, 1)), "nvjpeg") == decode_for(model.preprocess, Placement((0,)))


def test_gpu_decode_is_checked_with_the_other_options():
    from calib.data.decoders import decode_path
    from calib.data.transforms import get_preset
    from calib.session import GPU_DECODERS, RunConfig, check_config

    with pytest.raises(CalibError, match="--gpu-decode must be one of nvjpeg, pil, not 'fast'"):
        check_config(RunConfig(gpu_decode="fast"))
    # The --gpu-decode names are the decoder names every layer below takes.
    assert [decode_path(get_preset("efficientnet-lite"), d) for d in GPU_DECODERS] == ["nvjpeg+pil-bicubic", "pil"]


def test_gpu_decode_pil_needs_linux_on_a_gpu(monkeypatch):
    import calib.session.config as session

    import calib.onnx_io as onnx_io
    import calib.placement as placement

    monkeypatch.setattr(placement.sys, "platform", "win32")
    monkeypatch.setattr(onnx_io, "require_cuda_provider", lambda: None)     # as on a GPU machine
    monkeypatch.setattr(placement, "require_torch_cuda", lambda device: None)
    with pytest.raises(CalibError, match="needs Linux"):
        session.check_config(session.RunConfig(device="cuda", gpu_decode="pil"))
    session.check_config(session.RunConfig(device="cpu", gpu_decode="pil"))   # no GPU: nothing to fork
    session.check_config(session.RunConfig(device="cuda", gpu_decode="nvjpeg"))


@pytest.mark.parametrize("decoder, says", [("pil", "the CPU path's pixels bit for bit"),
                                           ("nvjpeg", "decoded by nvJPEG")])
def test_a_gpu_report_says_how_its_images_were_decoded(monkeypatch, decoder, says):
    from types import SimpleNamespace

    from calib.data.transforms import get_preset
    from calib.session import report_header

    monkeypatch.setattr("calib.report.header.versions", lambda: {})
    setup = SimpleNamespace(data=SimpleNamespace(notes=[], demo=False), flavor="tensorrt",
                            model=SimpleNamespace(name="m", sha256="0" * 64, preprocess=get_preset("efficientnet-lite")))
    config = RunConfig(model="m", gpu_decode=decoder)
    header = report_header(config, setup, Placement((0,)))
    assert says in header.notes[0] and len(header.notes) == 1 and header.device == "cuda:0"
    assert header.decode_path == ("pil" if decoder == "pil" else "nvjpeg+pil-bicubic")
    assert report_header(config, setup).notes == []   # on the CPU: nothing to say


def test_setup_lowers_a_batch_the_machine_cannot_hold_and_refuses_a_model_that_does_not_fit(tmp_path, monkeypatch):
    """Issue 22: --input-size 4000 on a dynamic-size model grew until the kernel killed it with no
    message. setup estimates the memory of its batches from the model's graph (calib.models.memory)
    before any work: a batch too large is lowered in one warning line, one image too large is
    refused in one line, and nothing is written (no prepared model, no output folder)."""
    import warnings

    from calib.models import memory
    from calib.models.memory import memory_need
    from calib.onnx_io import load_model
    from calib.session.context import setup
    from tests.conftest import make_classifier

    model = make_classifier(tmp_path / "m.onnx", size=16)
    need = memory_need(load_model(model), (3, 16, 16))
    config = RunConfig(model=str(model), samples=4, cache_dir=str(tmp_path / "caches"), progress=False)
    monkeypatch.setattr(memory, "available_memory", lambda: need.total(10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = setup(config, tmp_path / "out")
    assert (config.calib_batch_size, config.batch_size) == (4, 10) and s.prepared is not None
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "evaluation: a batch of 32 needs about" in lines[0] and "batches of 10" in lines[0]

    home = tmp_path / "home"
    monkeypatch.setenv("CALIB_HOME", str(home))
    monkeypatch.setattr(memory, "available_memory", lambda: need.total(1) - 1)
    with pytest.raises(CalibError) as info:
        setup(RunConfig(model=str(model), samples=4, cache_dir=str(tmp_path / "caches")), tmp_path / "out2")
    message = str(info.value)
    assert "\n" not in message and "for even one image" in message and "smaller --input-size" in message
    assert not (tmp_path / "out2").exists() and not list(home.rglob("*.onnx"))


def test_setup_runs_a_model_that_runs_only_at_batch_1_at_batch_1_and_says_so_once(tmp_path):
    """Issue 22: a batch axis declared dynamic that runs only at batch 1 (prepared with its batch
    fixed at 1: calib.models.prepare) sets both passes to batch 1, in one warning line."""
    import warnings

    from calib.session.context import setup
    from tests.models.test_prepare import batch_one_model

    path = batch_one_model(tmp_path / "vitlike.onnx", classes=1000)
    config = RunConfig(model=str(path), samples=4, cache_dir=str(tmp_path / "caches"), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup(config, tmp_path / "out")
    assert config.pass_batch_sizes() == (1, 1) and config.speed_seconds == 0
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "runs only at batch 1" in lines[0] and "vitlike.onnx" in lines[0]


@pytest.mark.parametrize("fields, words", [
    ({"speed_seconds": float("inf")}, "--speed-seconds must be a finite number"),
    ({"max_drop": float("nan")}, "--max-drop must be a finite number"),
    ({"seed": -1}, "--seed must be at least 0"),
    ({"speed_seconds": -1.0}, "--speed-seconds must be at least 0"),
])
def test_numbers_are_checked_for_library_callers_too(fields, words):
    with pytest.raises(CalibError, match=words):
        check_config(RunConfig(**fields))


@pytest.mark.parametrize("value", [101.0, 0.0, -5.0, float("nan")])
def test_a_percentile_is_range_checked_whatever_the_calibrator(value):
    for calibrator in ("minmax", "percentile"):
        with pytest.raises(CalibError, match=r"percentile must be a number in \(0, 100\]"):
            check_config(RunConfig(calibrator=calibrator, calibrator_params={"percentile": value}))


def test_a_parameter_no_chosen_calibrator_takes_is_refused():
    with pytest.raises(CalibError, match="--percentile 99.0 has no effect with minmax: only the percentile"):
        check_config(RunConfig(calibrator="minmax", calibrator_params={"percentile": 99.0}))
    with pytest.raises(CalibError, match="no effect with minmax, mse"):
        check_config(RunConfig(calibrator_params={"percentile": 99.0}), ["minmax", "mse"])
    # compare's several calibrators: fine when one of them takes it.
    check_config(RunConfig(calibrator_params={"percentile": 99.0}), ["minmax", "percentile"])
    check_config(RunConfig(calibrator="percentile", calibrator_params={"percentile": 99.0}))


def test_compare_refuses_a_percentile_none_of_its_calibrators_takes(tmp_path):
    from calib.commands.compare import compare_calibrators

    config = RunConfig(calibrator_params={"percentile": 99.0}, cache_dir=str(tmp_path / "c"))
    with pytest.raises(CalibError, match="no effect"):
        compare_calibrators(config, ["minmax", "entropy"], tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_a_folder_without_a_dataset_is_imagenet_val():
    assert RunConfig().dataset == "demo"
    assert RunConfig(data_dir="/some/folder").dataset == "imagenet-val"
    assert RunConfig(dataset="hf:x", data_dir=None).dataset == "hf:x"


@pytest.mark.parametrize("fields, flags", [
    ({"dataset": "demo", "data_dir": "/d"}, "--data-dir"),
    ({"dataset": "demo", "eval_data_dir": "/e"}, "--eval-data-dir"),
    ({"dataset": "hf:beans", "data_dir": "/d", "eval_data_dir": "/e"}, "--data-dir or --eval-data-dir"),
])
def test_a_folder_the_dataset_does_not_read_is_refused(fields, flags):
    with pytest.raises(CalibError, match=f"--dataset {fields['dataset']} reads .*, not {flags}: folders are for "
                                         "imagenet-val"):
        check_config(RunConfig(**fields))


def test_a_gpu_run_on_a_machine_without_a_gpu_says_so_beside_the_missing_provider(monkeypatch):
    # "pip install onnxruntime-gpu" alone sent a user with no GPU at all to install a package
    # that could not help.
    import torch

    import onnxruntime

    from calib.session.config import RunConfig, check_config

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CalibError, match="onnxruntime-gpu.*sees no CUDA GPU on this machine"):
        check_config(RunConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CalibError) as e:
        check_config(RunConfig(device="cuda"))
    assert "onnxruntime-gpu" in str(e.value) and "sees no CUDA GPU" not in str(e.value)


def test_gpu_batch_sizes_grow_only_where_the_user_left_the_defaults():
    assert RunConfig(device="cuda:0,1").pass_batch_sizes() == (64, 256)
    assert RunConfig(device="cuda", batch_size=8).pass_batch_sizes() == (64, 8)
    assert RunConfig().pass_batch_sizes() == (4, 32)


def test_a_budget_out_of_range_is_refused_before_the_model_is_read_naming_either_figure():
    # Before the model is read its task is unknown: the figure is top-1 for a classifier, the task
    # metric otherwise, and the message must not call a detector's budget a top-1 budget.
    with pytest.raises(CalibError, match=r"--max-drop is a fraction of top-1 or the task metric in \[0, 1\].*1.5"):
        check_config(RunConfig(max_drop=1.5))
    with pytest.raises(CalibError, match="--min-agreement is a fraction in"):
        check_config(RunConfig(min_agreement=-0.1))
