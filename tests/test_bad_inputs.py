"""Issue 11's rows through the real command line: every bad input ends in one line on stderr and a
non-zero exit, and leaves nothing behind (no output folder, no temp file, no unrelated file
overwritten). Each case is a row of the issue; the library-level tests of the same promises are
in tests/cache, tests/data and tests/test_fsutil.py."""

import json
from pathlib import Path

import pytest

from tests.conftest import has_cuda_ort
from tests.test_cli import assert_one_line_error, calib


def leftovers(folder: Path) -> list[str]:
    """Hidden temp files and staged folders a failed command must not leave behind."""
    return [str(p) for p in folder.rglob(".*") if p.name != ".calib.lock"
            and (p.name.endswith(".tmp") or p.name.endswith(".partial") or ".partial" in p.name)]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_model):
    """A valid cache (and its run) for the tiny 1000-class model on the demo photos."""
    work = tmp_path_factory.mktemp("cal")
    calib("run", "--model", tiny_model, "--samples", 8, "--cache-dir", work / "caches", "--out", work / "run",
          "--no-html", "--speed-seconds", 0)
    cache = next((work / "caches").glob("*.cache"))
    return work, cache


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.conftest import make_classifier

    return make_classifier(tmp_path_factory.mktemp("m") / "tiny.onnx")


def poison(cache: Path, folder: Path, hex_value: str) -> Path:
    """A copy of `cache` and its sidecar in `folder` with the first scale set to `hex_value`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = cache.read_text().splitlines()
    name, _ = lines[1].rsplit(": ", 1)
    lines[1] = f"{name}: {hex_value}"
    (folder / cache.name).write_text("\n".join(lines) + "\n")
    side = json.loads(cache.with_suffix(".json").read_text())
    side["tensors"][name]["scale"] = hex_value
    (folder / cache.with_suffix(".json").name).write_text(json.dumps(side))
    return folder / cache.name


@pytest.mark.parametrize("hex_value", ["7fc00000", "bd418306"])  # NaN, negative
def test_row1_a_corrupt_cache_is_never_reused(calibrated, tiny_model, tmp_path, hex_value):
    _, cache = calibrated
    poison(cache, tmp_path / "caches", hex_value)
    proc = calib("run", "--model", tiny_model, "--samples", 8, "--cache-dir", tmp_path / "caches",
                 "--out", tmp_path / "out", "--no-html", check=False)
    assert_one_line_error(proc, "--recalibrate")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    # --recalibrate replaces it, and the run goes through.
    calib("run", "--model", tiny_model, "--samples", 8, "--cache-dir", tmp_path / "caches", "--out", tmp_path / "ok",
          "--no-html", "--speed-seconds", 0, "--recalibrate")
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["calibration"]["reused"] is False


def test_row2_invalid_caches_are_refused_by_import_and_export(calibrated, tiny_model, tmp_path):
    _, cache = calibrated
    header_only = tmp_path / "header.cache"
    header_only.write_text(cache.read_text().splitlines()[0] + "\n")
    partial = tmp_path / "partial.cache"
    partial.write_text("\n".join(cache.read_text().splitlines()[:3]) + "\n")
    all_inf = tmp_path / "inf.cache"
    all_inf.write_text("\n".join([cache.read_text().splitlines()[0]] + [
        line.rsplit(": ", 1)[0] + ": 7f800000" for line in cache.read_text().splitlines()[1:]]) + "\n")
    for bad, words in ((header_only, []), (partial, ["--force"]), (all_inf, [])):
        proc = calib("cache", "import", bad, "--model", tiny_model, "--cache-dir", tmp_path / "store", check=False)
        assert_one_line_error(proc, *words)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.cache"))
    nan = poison(cache, tmp_path / "nan", "7fc00000")
    for args, words in ((["cache", "export", nan, "--trt-version", "10.3"], []),
                        (["cache", "export", cache, "--trt-version", "99.99.99"], ["99.99.99"])):
        proc = calib(*args, "--out", tmp_path / "exported.cache", check=False)
        assert_one_line_error(proc, *words)
        assert not (tmp_path / "exported.cache").exists()


def test_row3_disjointness_is_computed_from_the_files(tiny_model, small_imagenet, tmp_path):
    """Evaluating on the calibration folder itself: the report counts the overlap and says so."""
    calib("run", "--model", tiny_model, "--dataset", "imagenet-val", "--data-dir", small_imagenet,
          "--eval-data-dir", small_imagenet, "--samples", 5, "--cache-dir", tmp_path / "c", "--out", tmp_path / "r",
          "--no-html", "--speed-seconds", 0, "--workers", 0)
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert r["eval"]["disjoint_from_calibration"] is False and r["eval"]["overlap"]["overlapping"] >= 5
    assert any("optimistic" in note for note in r["notes"])


def test_row3_the_demo_says_its_images_are_not_disjoint(calibrated):
    work, _ = calibrated
    r = json.loads((work / "run" / "report.json").read_text())
    assert r["demo"] and r["eval"]["disjoint_from_calibration"] is False


@pytest.mark.parametrize("case", ["out-is-a-file", "out-under-a-file", "out-unwritable", "cache-dir-is-a-file",
                                  "cache-dir-unwritable"])
def test_row4_output_paths_are_checked_before_any_work(case, tiny_model, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    out, cache_dir = tmp_path / "out", tmp_path / "caches"
    if case == "out-is-a-file":
        out = a_file
    elif case == "out-under-a-file":
        out = a_file / "sub"
    elif case == "out-unwritable":
        out = Path("/proc/self/calib-out")
    elif case == "cache-dir-is-a-file":
        cache_dir = a_file
    else:
        cache_dir = Path("/proc/self/calib-caches")
    proc = calib("run", "--model", tiny_model, "--samples", 4, "--out", out, "--cache-dir", cache_dir, check=False)
    assert_one_line_error(proc)
    assert a_file.read_text() == "mine" and not leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_row5_build_and_export_never_overwrite_a_file_calib_did_not_write(calibrated, tiny_model, tmp_path):
    _, cache = calibrated
    theirs = tmp_path / "existing.txt"
    theirs.write_text("someone's notes")
    for args in (["build", "--model", tiny_model, "--cache", cache], ["cache", "export", cache, "--trt-version", "10.3"]):
        proc = calib(*args, "--out", theirs, check=False)
        assert_one_line_error(proc, "--overwrite")
        assert theirs.read_text() == "someone's notes"
    # calib's own output may be rebuilt in place, and --overwrite replaces another file.
    calib("build", "--model", tiny_model, "--cache", cache, "--out", tmp_path / "int8.onnx")
    calib("build", "--model", tiny_model, "--cache", cache, "--out", tmp_path / "int8.onnx")
    calib("cache", "export", cache, "--trt-version", "10.3", "--out", theirs, "--overwrite")
    assert theirs.read_text().startswith("TRT-100")


def test_row6_a_folder_given_as_a_cache_is_named_as_such(tiny_model, tmp_path):
    for args in (["build", "--model", tiny_model, "--out", tmp_path / "x.onnx", "--cache"], ["cache", "show"]):
        proc = calib(*args, tmp_path, check=False)
        assert_one_line_error(proc, "folder")


def test_row8_cache_list_scans_the_folder_without_its_index(calibrated, tmp_path):
    import shutil

    _, cache = calibrated
    folder = tmp_path / "caches"
    folder.mkdir()
    shutil.copy(cache, folder)
    shutil.copy(cache.with_suffix(".json"), folder)
    proc = calib("cache", "list", "--cache-dir", folder)
    assert cache.name in proc.stdout and "no caches" not in proc.stdout
    (folder / "index.json").write_text("{ not json")
    assert cache.name in calib("cache", "list", "--cache-dir", folder).stdout


def test_row11_version_and_plain_help():
    from calib import __version__

    assert calib("--version").stdout.strip() == f"calib {__version__}"
    text = calib("run", "--help").stdout
    assert "--recalibrate" in text and "<bool>" not in text


def test_percentile_applies_to_the_percentile_calibrator_only(tiny_model, tmp_path):
    """--percentile with minmax was refused after the model was prepared; it is ignored for
    calibrators that take no percentile, as compare always did."""
    proc = calib("calibrate", "--model", tiny_model, "--samples", 4, "--percentile", 99.9,
                 "--cache-dir", tmp_path / "c")
    assert Path(proc.stdout.strip().splitlines()[-1]).is_file()


def test_bench_takes_the_same_devices_as_run(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    rows = json.loads(calib("bench", "--model", tiny_model, "--seconds", 0.05, "--batch-sizes", 1,
                            "--device", "auto", "--json").stdout)
    assert rows[0]["device"] == "cpu"
    assert_one_line_error(calib("bench", "--model", tiny_model, "--device", "tpu", check=False), "tpu")


@pytest.mark.parametrize("command", ["run", "calibrate", "compare", "sensitivity"])
def test_an_unknown_gpu_decoder_is_refused_before_any_work(command, tiny_model, tmp_path):
    out, cache_dir = tmp_path / "out", tmp_path / "caches"
    extra = [] if command == "calibrate" else ["--out", out]
    proc = calib(command, "--model", tiny_model, "--samples", 4, "--cache-dir", cache_dir, "--gpu-decode", "fast",
                 *extra, check=False)
    assert_one_line_error(proc, "--gpu-decode must be one of nvjpeg, pil")
    assert not leftovers(tmp_path) and not out.exists()


def test_build_device_is_checked_before_anything_is_written(calibrated, tiny_model, tmp_path):
    _, cache = calibrated
    out = tmp_path / "int8.onnx"
    cases = [(["--device", "cuda:0,1"], "one GPU"), (["--device", "gpu"], "unknown device"),
             (["--backend", "tensorrt-rtx", "--device", "cuda"], "--backend ort")]
    if not has_cuda_ort():
        cases.append((["--device", "cuda"], "onnxruntime-gpu"))
    for extra, words in cases:
        proc = calib("build", "--model", tiny_model, "--cache", cache, "--out", out, *extra, check=False)
        assert_one_line_error(proc, words)
        assert not out.exists() and not leftovers(tmp_path)
    # auto without a usable GPU is the CPU: the build goes through, nothing is run on a device.
    if not has_cuda_ort():
        proc = calib("build", "--model", tiny_model, "--cache", cache, "--out", out, "--device", "auto")
        assert out.is_file() and "CUDA provider" not in proc.stderr



def test_build_device_auto_follows_the_other_commands_rule(monkeypatch):
    import torch

    from calib.backends import ort
    from calib.commands.build import build_device

    # A GPU machine: auto picks the GPU for the ort backend, the CPU for backends that run on the
    # GPU by themselves (RunConfig.placement), as for run, compare and bench.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "require_cuda_provider", lambda: None)
    assert build_device("auto", "tensorrt-rtx") == "cpu"


# -- issue 22: output folder, model cache, signals, hf offline, progress ------------------------

def _calib_popen(*args, env=None):
    """`calib` in the background, with SIGHUP at its default: a test runner started under nohup
    (or a CI agent that ignores it) passes SIG_IGN on, which calib rightly keeps."""
    import os
    import signal
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "calib.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


def _wait_for_stage(folder: Path, proc, seconds: float = 60) -> Path:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        stages = [p for p in folder.glob(".*.partial") if p.is_dir()]
        if stages:
            return stages[0]
        time.sleep(0.01)
    raise AssertionError(f"no staged folder appeared: {proc.communicate()[1]}")


@pytest.mark.parametrize("cache_dir", ["x", "x/caches"])
def test_i22_row1_out_that_is_or_holds_the_cache_dir_is_refused_before_any_work(cache_dir, tiny_model, tmp_path):
    proc = calib("run", "--model", tiny_model, "--samples", 4, "--out", tmp_path / "x",
                 "--cache-dir", tmp_path / cache_dir, check=False)
    assert_one_line_error(proc, "--cache-dir")
    assert list(tmp_path.iterdir()) == []


def test_i22_row1_two_runs_with_one_out_one_wins_the_other_ends_in_one_line(tiny_model, tmp_path):
    args = ["run", "--model", tiny_model, "--samples", 8, "--cache-dir", tmp_path / "c", "--out", tmp_path / "r",
            "--no-html", "--speed-seconds", 0.2]
    a, b = _calib_popen(*args), _calib_popen(*args)
    results = [(p.wait(300), p.communicate()[1]) for p in (a, b)]
    assert sorted(code for code, _ in results)[0] == 0 and sorted(code for code, _ in results)[1] != 0, results
    err = next(e for code, e in results if code != 0)
    assert "Traceback" not in err and len([l for l in err.splitlines() if l.startswith("calib: error:")]) == 1
    assert (tmp_path / "r" / "report.json").is_file() and not leftovers(tmp_path)


def test_i22_row2_a_calib_home_that_is_a_file_is_one_line(tiny_model, tmp_path):
    (tmp_path / "home").write_text("not a folder")
    proc = calib("run", "--model", tiny_model, "--samples", 4, "--out", tmp_path / "r", "--cache-dir", tmp_path / "c",
                 check=False, env={"CALIB_HOME": str(tmp_path / "home")})
    assert_one_line_error(proc, "CALIB_HOME")
    assert not (tmp_path / "r").exists() and not leftovers(tmp_path)


def test_i22_row3_sighup_ends_like_sigterm_and_a_killed_runs_stage_is_cleaned(tiny_model, tmp_path):
    import signal

    args = ["run", "--model", tiny_model, "--samples", 8, "--cache-dir", tmp_path / "c", "--no-html",
            "--speed-seconds", 2]
    proc = _calib_popen(*args, "--out", tmp_path / "hup")
    _wait_for_stage(tmp_path, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert [l for l in err.splitlines() if l.startswith("calib: error:")] == ["calib: error: terminated (hangup)"]
    assert not leftovers(tmp_path) and not (tmp_path / "hup").exists()
    # SIGKILL runs no cleanup: its stage stays until the next run in that folder removes it.
    proc = _calib_popen(*args, "--out", tmp_path / "killed")
    stage = _wait_for_stage(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert stage.is_dir()
    done = calib(*args[:-1], 0.2, "--out", tmp_path / "next")
    assert not stage.exists() and not leftovers(tmp_path) and (tmp_path / "next" / "report.json").is_file()
    assert "timing speed" in done.stderr                  # row 6: the speed phase shows progress


def test_i22_row4_a_hub_name_without_network_is_one_line_at_once(tiny_model, tmp_path):
    import time

    pytest.importorskip("datasets")
    start = time.monotonic()
    proc = calib("run", "--model", tiny_model, "--dataset", "hf:calib-tests/no-such-dataset", "--samples", 4,
                 "--out", tmp_path / "r", "--cache-dir", tmp_path / "c", check=False,
                 env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": ""})
    assert_one_line_error(proc, "no-such-dataset")
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [proc.stderr.strip()]   # no retry lines
    assert time.monotonic() - start < 20 and not (tmp_path / "r").exists()


def test_i22_row3_a_stop_signal_is_not_swallowed_by_except_exception():
    """A SIGTERM that landed in library code falling back on `except Exception` (ONNX shape
    inference, when a signal arrived as calibration began) was swallowed and the run went on."""
    from calib.cli import Interrupted, _interrupt
    import signal

    assert not issubclass(Interrupted, Exception)
    with pytest.raises(Interrupted, match="hangup"):
        try:
            _interrupt(signal.SIGHUP, None)
        except Exception:
            pass
