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
    """--percentile with minmax was refused after the model was prepared, then ignored; it is
    refused before any work (issue 22 row 1: an option that has no effect is an error)."""
    proc = calib("calibrate", "--model", tiny_model, "--samples", 4, "--percentile", 99.9,
                 "--cache-dir", tmp_path / "c", check=False)
    assert_one_line_error(proc, "--percentile", "no effect", "minmax")
    assert proc.returncode == 2 and not (tmp_path / "c").exists()


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

    from calib import onnx_io
    from calib.commands.build import build_device

    # A GPU machine: auto picks the GPU for the ort backend, the CPU for backends that run on the
    # GPU by themselves (RunConfig.placement), as for run, compare and bench.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnx_io, "require_cuda_provider", lambda: None)
    assert build_device("auto", "tensorrt-rtx") == "cpu"


# Issue 22: what calib takes as --model, and what a run asks of the machine.

def _dynamic_hw(path: Path, classes: int = 1000) -> Path:
    """The tiny classifier with dynamic height and width (NVIDIA's walkthrough export)."""
    import onnx

    from tests.conftest import make_classifier

    proto = onnx.load(str(make_classifier(path, classes=classes)))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims[2:], ("height", "width")):
        d.Clear()
        d.dim_param = name
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("command", ["run", "calibrate", "build"])
def test_a_quantized_model_is_refused_as_the_fp32_reference(command, calibrated, tmp_path):
    work, cache = calibrated
    int8 = work / "run" / "int8.onnx"   # calib's own ort-flavor output
    out = tmp_path / "out"
    caches = ["--cache-dir", tmp_path / "caches"]
    extra = {"run": ["--out", out, "--samples", 4, *caches], "calibrate": ["--samples", 4, *caches],
             "build": ["--cache", cache, "--out", out / "int8.onnx"]}[command]
    proc = calib(command, "--model", int8, *extra, check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "already quantized", "QuantizeLinear", "FP32")
    assert not out.exists() and not (tmp_path / "caches").exists() and not leftovers(tmp_path)


def test_a_tensorrt_flavor_int8_model_is_refused_in_one_line(tmp_path):
    from tests.models.test_intake import _calib_int8

    int8 = _calib_int8(tmp_path, "tensorrt")
    proc = calib("run", "--model", int8, "--samples", 4, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "already quantized")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_a_uint8_input_is_refused_naming_its_data_type(tmp_path):
    import onnx
    from onnx import TensorProto

    path = _dynamic_hw(tmp_path / "u8.onnx")
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.save(proto, str(path))
    proc = calib("run", "--model", path, "--samples", 4, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "uint8 input", "float32")
    assert not (tmp_path / "out").exists()


def test_bench_refuses_a_batch_the_machine_cannot_hold(tmp_path):
    from tests.conftest import make_classifier

    model = make_classifier(tmp_path / "m224.onnx", size=224)   # about 3 MB an image: 300 GB at 100000
    proc = calib("bench", "--model", model, "--batch-sizes", "1,100000", "--seconds", 0.05, check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "timing at batch 100000 needs about", "is available", "use a batch of at most")


def test_an_input_size_the_machine_cannot_hold_is_refused_before_any_work(tmp_path):
    model = _dynamic_hw(tmp_path / "dyn.onnx")   # 100000x100000: some 600 GB for one image
    out = tmp_path / "out"
    proc = calib("run", "--model", model, "--input-size", 100000, "--samples", 4, "--out", out,
                 "--cache-dir", tmp_path / "caches", check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "for even one image", "smaller --input-size")
    assert not out.exists() and not leftovers(tmp_path)


def test_a_model_that_runs_only_at_batch_1_runs_at_batch_1_with_one_warning(tmp_path):
    from tests.models.test_prepare import batch_one_model

    model = batch_one_model(tmp_path / "vitlike.onnx", classes=1000)
    out = tmp_path / "out"
    proc = calib("run", "--model", model, "--samples", 4, "--eval-samples", 2, "--out", out,
                 "--cache-dir", tmp_path / "caches", "--no-html", "--speed-seconds", 0)
    warned = [line for line in proc.stderr.splitlines() if "runs only at batch 1" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ")
    assert "Traceback" not in proc.stderr and "onnxruntime" not in proc.stderr
    assert (out / "report.json").is_file()


# ---------------------------------------------------------------------------------------------
# Issue 22: what a report says about where its figures come from, and what questions them.

def _class_folder(root: Path, val: Path, wnids: list[str]) -> Path:
    import shutil

    for wnid in wnids:
        shutil.copytree(val / wnid, root / wnid)
    return root


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory, imagenet_sample):
    """A calibration folder A (6 images) and an evaluation folder B (8 other images and an
    undecodable one whose name is not UTF-8, made through bytes paths as Linux allows)."""
    import os

    val = imagenet_sample / "val"
    wnids = sorted(os.listdir(val))
    work = tmp_path_factory.mktemp("i22")
    a = _class_folder(work / "A", val, wnids[:6])
    b = _class_folder(work / "B", val, wnids[6:14])
    with open(os.path.join(os.fsencode(b / wnids[6]), b"bad_\xff\xfe.JPEG"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    return work, a, b


@pytest.fixture(scope="module")
def run_a_b(two_folders, tiny_model):
    """`calib run --data-dir A --eval-data-dir B` with more --samples than A holds."""
    work, a, b = two_folders
    proc = calib("run", "--model", tiny_model, "--dataset", "imagenet-val", "--data-dir", a, "--eval-data-dir", b,
                 "--samples", 10, "--cache-dir", work / "caches", "--out", work / "run", "--speed-seconds", 0,
                 "--workers", 0)
    return work / "run", proc


def test_run_names_the_evaluation_folder_and_the_model_file(two_folders, run_a_b, tiny_model):
    _, a, b = two_folders
    out, _ = run_a_b
    r = json.loads((out / "report.json").read_text())
    assert r["evaluation_data"]["folder"] == str(b) and r["calibration_data"]["folder"] == str(a)
    assert r["model_file"] == str(Path(tiny_model).resolve()) and r["device"] == "cpu" and r["decode_path"]
    md = (out / "report.md").read_text()
    evaluated = next(line for line in md.splitlines() if line.startswith("- evaluated on"))
    assert str(b) in evaluated and str(a) not in evaluated
    for line in ("- evaluation data: `", "- calibration data: `", f"- model file: `{r['model_file']}`",
                 "- device: `cpu`", f"- decode path: `{r['decode_path']}`"):
        assert line in md
    assert str(b) in (out / "report.html").read_text()


def test_compare_names_the_evaluation_folder(two_folders, tiny_model):
    work, a, b = two_folders
    calib("compare", "--model", tiny_model, "--dataset", "imagenet-val", "--data-dir", a, "--eval-data-dir", b,
          "--samples", 6, "--calibrators", "minmax,percentile", "--cache-dir", work / "caches",
          "--out", work / "compare", "--workers", 0, "--sqnr-images", 2)
    r = json.loads((work / "compare" / "compare.json").read_text())
    assert r["evaluation_data"]["folder"] == str(b) and r["calibration_data"]["folder"] == str(a)
    md = (work / "compare" / "compare.md").read_text()
    assert str(b) in md.splitlines()[2] and str(a) not in md.splitlines()[2]   # the FP32 line
    assert f"- model file: `{r['model_file']}`" in md and "- device: `cpu`" in md


def test_a_file_name_that_is_not_utf8_is_reported_escaped(run_a_b):
    out, proc = run_a_b
    r = json.loads((out / "report.json").read_text())
    assert any(f.endswith("bad_\\xff\\xfe.JPEG") for f in r["eval"]["skipped_files"]), r["eval"]["skipped_files"]
    assert "bad_\\xff\\xfe.JPEG`" in (out / "report.md").read_text(encoding="utf-8")
    assert "bad_\\xff\\xfe.JPEG" in (out / "report.html").read_text(encoding="utf-8")


def test_fp32_at_chance_level_is_warned_in_one_line_and_in_the_report(run_a_b):
    out, proc = run_a_b   # the tiny model has random weights: 0% top-1
    warned = [line for line in proc.stderr.splitlines() if "no better than chance" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: FP32 top-1 is 0.00%"), proc.stderr
    assert any("no better than chance" in w for w in json.loads((out / "report.json").read_text())["warnings"])
    assert "- warning: FP32 top-1 is 0.00%" in (out / "report.md").read_text()


def test_the_reports_warnings_are_printed_on_the_terminal_once_each(run_a_b):
    out, proc = run_a_b
    r = json.loads((out / "report.json").read_text())
    assert any("only 6 images available for calibration" in w for w in r["warnings"])
    lines = proc.stderr.splitlines()
    for w in r["warnings"]:
        assert lines.count(f"warning: {w}") == 1, (w, proc.stderr)
        assert f"- warning: {w}" in (out / "report.md").read_text()


# --- Issue 22: options (rows 1-8). Each bad input: one line on stderr, exit 2, nothing written. ---


def assert_usage_error(proc, *words):
    """A bad option or value: calib's one line (never click's usage block) and exit 2."""
    assert_one_line_error(proc, *words)
    assert proc.returncode == 2, proc.stderr
    assert "Usage:" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["run", "--bogus"], ["--bogus", "calib run --help"]),
    (["run", "--seed", "-1"], ["--seed"]),
    (["run", "--speed-seconds", "inf"], ["--speed-seconds", "finite"]),
    (["cache", "show"], ["cache", "calib cache show --help"]),
    (["build", "--cache", "c.cache", "--out", "m.onnx", "--backend", "tensorrt-rtx", "--compute-capability", "abc"], ["86, 89, 120", "8.9"]),
    (["build", "--cache", "c.cache", "--out", "m.onnx", "--backend", "tensorrt-rtx", "--compute-capability", ""], ["86, 89, 120"]),
])
def test_usage_errors_are_one_line(args, words, tmp_path):
    proc = calib(*args, cwd=tmp_path, check=False)
    assert_usage_error(proc, *words)
    assert not list(tmp_path.iterdir())


def test_compute_capability_takes_the_docs_notation():
    from calib.commands.build import trt_options

    assert trt_options("tensorrt-rtx", compute_capability="8.9") == {"compute_capability": 89}
    assert trt_options("tensorrt-rtx", compute_capability="89") == {"compute_capability": 89}
    assert trt_options("tensorrt-rtx", compute_capability="12.0") == {"compute_capability": 120}


def test_data_dir_alone_means_imagenet_val_and_demo_refuses_a_folder(tiny_model, small_imagenet,
                                                                                 tmp_path):
    work = tmp_path / "work"
    proc = calib("run", "--dataset", "demo", "--data-dir", small_imagenet, "--samples", 4, "--model", tiny_model,
                 "--cache-dir", work / "c", "--out", work / "r", check=False)
    assert_one_line_error(proc, "--dataset demo", "--data-dir")
    assert proc.returncode == 2 and not work.exists()
    proc = calib("calibrate", "--data-dir", small_imagenet, "--samples", 4, "--model", tiny_model,
                 "--cache-dir", work / "c", "--workers", 0)
    sidecar = json.loads(Path(proc.stdout.strip().splitlines()[-1]).with_suffix(".json").read_text())
    assert sidecar["key"]["dataset_id"].startswith("imagenet-val") and 1 <= sidecar["samples"] <= 4   # a corrupt one skipped


def test_sensitivity_runs_on_a_small_folder_without_samples(tiny_model, small_imagenet, tmp_path):
    """A fixed default of 500 calibration images left nothing to evaluate on a folder of 500 or fewer."""
    calib("sensitivity", "--data-dir", small_imagenet, "--model", tiny_model, "--images", 2, "--workers", 0,
          "--cache-dir", tmp_path / "c", "--out", tmp_path / "s")
    assert (tmp_path / "s" / "sensitivity.json").is_file()


@pytest.mark.parametrize("extra, out, words", [
    ([], "model.engine", ["--backend ort writes a .onnx file", "*.onnx"]),
    (["--backend", "tensorrt-rtx"], "model.onnx", ["--backend tensorrt-rtx writes an engine", "*.engine"]),
])
def test_out_must_name_what_the_backend_writes(calibrated, tiny_model, tmp_path, extra, out, words):
    _, cache = calibrated
    if extra:
        pytest.importorskip("tensorrt_rtx_bindings")
    proc = calib("build", "--model", tiny_model, "--cache", cache, "--out", tmp_path / out, *extra, check=False)
    assert_one_line_error(proc, *words)
    assert proc.returncode == 2 and not list(tmp_path.iterdir())


def test_a_tensorrt_rtx_build_names_the_qdq_model_it_keeps(calibrated, tiny_model, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    _, cache = calibrated
    proc = calib("build", "--model", tiny_model, "--cache", cache, "--backend", "tensorrt-rtx",
                 "--out", tmp_path / "tiny.plan")
    assert proc.stdout.strip() == str(tmp_path / "tiny.plan")
    assert f"Q/DQ model kept beside it: {tmp_path / 'tiny.qdq.onnx'}" in proc.stderr
    assert (tmp_path / "tiny.qdq.onnx").is_file()


def test_device_auto_names_the_device_on_stderr(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    proc = calib("bench", "--model", tiny_model, "--seconds", 0.05, "--batch-sizes", 1, "--device", "auto", "--json")
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: --device auto")]
    assert notes == ["note: --device auto runs on the CPU: torch sees no CUDA GPU"], proc.stderr


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
def test_out_that_is_or_holds_the_cache_dir_is_refused_before_any_work(cache_dir, tiny_model, tmp_path):
    proc = calib("run", "--model", tiny_model, "--samples", 4, "--out", tmp_path / "x",
                 "--cache-dir", tmp_path / cache_dir, check=False)
    assert_one_line_error(proc, "--cache-dir")
    assert list(tmp_path.iterdir()) == []


def test_two_runs_with_one_out_one_wins_the_other_ends_in_one_line(tiny_model, tmp_path):
    args = ["run", "--model", tiny_model, "--samples", 8, "--cache-dir", tmp_path / "c", "--out", tmp_path / "r",
            "--no-html", "--speed-seconds", 0.2]
    a, b = _calib_popen(*args), _calib_popen(*args)
    results = [(p.wait(300), p.communicate()[1]) for p in (a, b)]
    assert sorted(code for code, _ in results)[0] == 0 and sorted(code for code, _ in results)[1] != 0, results
    err = next(e for code, e in results if code != 0)
    assert "Traceback" not in err and len([l for l in err.splitlines() if l.startswith("calib: error:")]) == 1
    assert (tmp_path / "r" / "report.json").is_file() and not leftovers(tmp_path)


def test_a_calib_home_that_is_a_file_is_one_line(tiny_model, tmp_path):
    (tmp_path / "home").write_text("not a folder")
    proc = calib("run", "--model", tiny_model, "--samples", 4, "--out", tmp_path / "r", "--cache-dir", tmp_path / "c",
                 check=False, env={"CALIB_HOME": str(tmp_path / "home")})
    assert_one_line_error(proc, "CALIB_HOME")
    assert not (tmp_path / "r").exists() and not leftovers(tmp_path)


def test_sighup_ends_like_sigterm_and_a_killed_runs_stage_is_cleaned(tiny_model, tmp_path):
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


def test_a_hub_name_without_network_is_one_line_at_once(tiny_model, tmp_path):
    import time

    pytest.importorskip("datasets")
    start = time.monotonic()
    proc = calib("run", "--model", tiny_model, "--dataset", "hf:calib-tests/no-such-dataset", "--samples", 4,
                 "--out", tmp_path / "r", "--cache-dir", tmp_path / "c", check=False,
                 env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": ""})
    assert_one_line_error(proc, "no-such-dataset")
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [proc.stderr.strip()]   # no retry lines
    assert time.monotonic() - start < 20 and not (tmp_path / "r").exists()


def test_a_stop_signal_is_not_swallowed_by_except_exception():
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


# -- issue 21: --labels and the normalisation options. Each bad input: one line, exit 2, before any
# calibration (no output folder, no cache). ----------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The controlled detector and segmenter of tests/commands/labelled_models.py, their images
    (a.png, b.png) and a calibration folder, and label files good and bad."""
    from tests.commands import labelled_models as lm

    work = tmp_path_factory.mktemp("labels")
    coco = lm.coco_boxes()
    only_a = {**coco, "images": [im for im in coco["images"] if im["file_name"] == "a.png"]}
    (work / "broken.json").write_text('{"images": [{"id": 1, "file_name": "a.png"},')
    return {"work": work, "calibration": lm.calibration_images(work / "calibration"),
            "images": lm.solid_images(work / "images"), "detector": lm.box_detector(work / "detector.onnx"),
            "segmenter": lm.colour_segmenter(work / "segmenter.onnx"),
            "only_a": lm.write_json(only_a, work / "only_a.json"), "broken": work / "broken.json",
            "coco": lm.write_json(coco, work / "instances.json"),
            "small_masks": lm.image_masks(work / "small_masks", shape=(50, 50)),
            "some_masks": lm.image_masks(work / "some_masks")}


def _labelled_run(labelled, tmp_path, model, *extra):
    return calib("run", "--model", labelled[model], "--dataset", "images", "--data-dir", labelled["calibration"],
                 "--eval-data-dir", labelled["images"], "--preprocess", "letterbox", "--cache-dir", tmp_path / "c",
                 "--out", tmp_path / "r", "--workers", 0, *map(str, extra), check=False)


@pytest.mark.parametrize("model, extra, words", [
    ("detector", ["--task", "detect", "--labels", "only_a"],
     ["labels do not match the images", "1 of 2 evaluation images have no entry", "'b.png'"]),
    ("detector", ["--task", "detect", "--labels", "broken"], ["broken.json", "not JSON"]),
    ("segmenter", ["--task", "segment", "--labels", "small_masks"],
     ["labels do not match the images", "50x50", "96x128", "64x64"]),
    ("detector", ["--task", "generic", "--labels", "coco"], ["--task generic", "no --labels"]),
    ("segmenter", ["--labels", "some_masks"], ["--task generic", "no --labels"]),   # auto: not class scores
    ("detector", ["--task", "detect", "--labels", "no_such.json"], ["--labels", "no_such.json", "no such file"]),
    ("detector", ["--task", "segment", "--labels", "coco"], ["--task segment takes a folder"]),
    ("detector", ["--task", "detect", "--mean", "0.5,0.5"], ["--mean", "three numbers"]),
    ("detector", ["--task", "detect", "--mean", "red,green,blue"], ["--mean", "three numbers"]),
    ("detector", ["--task", "detect", "--std", "0.2,0,0.2"], ["--std", "above 0"]),
    ("detector", ["--task", "detect", "--mean", "123.675,116.28,103.53"], ["--mean", "divide 0-255 values by 255"]),
    ("detector", ["--task", "detect", "--channel-order", "brg"], ["--channel-order", "rgb, bgr"]),
])
def test_bad_labels_and_normalisation_are_one_line_before_any_calibration(labelled, tmp_path, model, extra, words):
    extra = [labelled.get(e, labelled["work"] / e if e.endswith(".json") else e) for e in extra]
    proc = _labelled_run(labelled, tmp_path, model, *extra)
    assert_one_line_error(proc, *words)
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "r").exists() and not list((tmp_path / "c").glob("*.cache")) and not leftovers(tmp_path)


def test_labels_for_a_classifier_are_refused(tiny_model, tmp_path):
    (tmp_path / "labels.json").write_text("{}")
    proc = calib("run", "--model", tiny_model, "--labels", tmp_path / "labels.json", "--out", tmp_path / "r",
                 "--cache-dir", tmp_path / "c", check=False)
    assert_one_line_error(proc, "--labels", "classifier reads its labels from the dataset")
    assert proc.returncode == 2 and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- issue 21: tasks
@pytest.fixture(scope="module")
def detector_and_frames(tmp_path_factory):
    """The YOLO-style test detector and a folder of unlabelled frames."""
    import numpy as np
    import onnx
    from PIL import Image

    from tests.quantize.head_models import YoloHead, build, export

    work = tmp_path_factory.mktemp("det")
    onnx.save(export(build(YoloHead)), str(work / "yolo.onnx"))
    rng = np.random.default_rng(0)
    (work / "frames").mkdir()
    for i in range(6):
        pixels = (rng.random((10, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((80, 50)).save(work / "frames" / f"{i}.png")
    return work / "yolo.onnx", work / "frames"


def test_a_task_model_with_min_agreement_or_a_task_that_does_not_fit_is_one_line(detector_and_frames, tmp_path):
    """--min-agreement is top-1 agreement, a classifier's figure: a detector's budget is --max-drop
    (calib.restore.score.TaskScorer.budget, made by the run's judge before any calibration). And sensitivity with a --task whose metric cannot
    read the model's outputs stops before calibrating (no cache, no output folder)."""
    detector, frames = detector_and_frames
    common = ["--model", detector, "--dataset", "images", "--data-dir", frames, "--samples", 4, "--preprocess",
              "letterbox", "--input-size", 64, "--cache-dir", tmp_path / "c"]
    proc = calib("run", *common, "--task", "detect", "--min-agreement", 0.99, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "--min-agreement")
    proc = calib("sensitivity", *common, "--task", "segment", "--images", 2, "--out", tmp_path / "s", check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "segment")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists() and not leftovers(tmp_path)
    assert not list(tmp_path.rglob("*.cache"))


# -- issue 21: named arrays (--dataset npz, --input-shape). Each bad input: one line on stderr, exit 2,
# nothing written.

@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    """ids (N, T) int64, mask (N, T) int64, bias (N, 4) float32 (tests/models/test_intake_arrays.py)."""
    from tests.models.test_intake_arrays import _two_inputs

    return Path(_two_inputs(tmp_path_factory.mktemp("arrays")))


def _npz_run(model: Path, data: Path, tmp_path: Path, *extra):
    return calib("run", "--model", model, "--dataset", "npz", "--data-dir", data, "--input-shape", "ids=6",
                 "--samples", 2, "--cache-dir", tmp_path / "caches", "--out", tmp_path / "out", *extra, check=False)


def _assert_refused(proc, tmp_path: Path, *words) -> None:
    assert_one_line_error(proc, *words)
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "caches").exists() and not leftovers(tmp_path)


def _good(i: int = 0) -> dict:
    import numpy as np

    return {"ids": np.full(6, i, np.int64), "mask": np.ones(6, np.int64), "bias": np.zeros(4, np.float32)}


@pytest.mark.parametrize("broken, words", [
    ({"drop": "mask"}, ["broken.npz: no array for the model's input mask"]),
    ({"ids": ("shape", (2, 3, 6))}, ["broken.npz: ids has shape (2, 3, 6)", "(N, 6)", "(6,)"]),
    ({"ids": ("shape", (7,))}, ["broken.npz: ids has shape (7,)"]),
    ({"bias": ("dtype", "int32")}, ["broken.npz: bias holds int32 values", "takes float32"]),
    ({"ids": ("dtype", "float32")}, ["broken.npz: ids holds float32 values", "takes int64"]),
])
def test_an_npz_file_that_does_not_fit_the_model_is_one_line_naming_it(two_inputs, tmp_path, broken, words):
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        np.savez(data / f"ok{i}.npz", **_good(i))
    arrays = _good()
    for name, change in broken.items():
        if name == "drop":
            arrays.pop(change)
        elif change[0] == "shape":
            arrays[name] = np.zeros(change[1], arrays[name].dtype)
        else:
            arrays[name] = arrays[name].astype(change[1])
    np.savez(data / "broken.npz", **arrays)
    _assert_refused(_npz_run(two_inputs, data, tmp_path), tmp_path, *words)


def test_an_empty_npz_folder_is_one_line(two_inputs, tmp_path):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no arrays here")
    _assert_refused(_npz_run(two_inputs, tmp_path / "empty", tmp_path), tmp_path, "no .npz or .npy files in")
    _assert_refused(calib("calibrate", "--model", two_inputs, "--dataset", "npz", "--input-shape", "ids=6",
                          "--cache-dir", tmp_path / "caches", check=False), tmp_path, "--dataset npz needs --data-dir")


def test_a_npy_file_for_a_model_with_several_inputs_is_one_line(two_inputs, tmp_path):
    import numpy as np

    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "ids.npy", np.zeros((4, 6), np.int64))
    _assert_refused(_npz_run(two_inputs, tmp_path / "data", tmp_path), tmp_path,
                    "ids.npy: a .npy file holds one array, for a model with one input", "takes 3 (ids, mask, bias)",
                    "np.savez")


@pytest.mark.parametrize("shapes, words", [
    (["tokens=6"], ["--input-shape names tokens, which is not an input of", "ids (N, T) int64"]),
    (["ids"], ["--input-shape must be NAME=DxD", "not 'ids'"]),
    (["ids=six"], ["--input-shape must be NAME=DxD"]),
    (["ids=6x2"], ["ids is (N, T), so give its 1 dimension(s)"]),
    (["ids=6", "mask=7"], ["gives the dimension 'T' two sizes, 6 and 7"]),
    ([], ["input ids (N, T) has a dynamic dimension 'T'", "--input-shape ids=<T>"]),
])
@pytest.mark.parametrize("command", ["run", "build"])
def test_a_bad_or_unknown_input_shape_is_one_line(two_inputs, tmp_path, shapes, words, command):
    import numpy as np

    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "a.npz", **_good())
    given = [a for s in shapes for a in ("--input-shape", s)]
    if command == "run":
        proc = calib("run", "--model", two_inputs, "--dataset", "npz", "--data-dir", tmp_path / "data", *given,
                     "--cache-dir", tmp_path / "caches", "--out", tmp_path / "out", check=False)
    else:
        proc = calib("build", "--model", two_inputs, *given, "--cache", tmp_path / "none.cache",
                     "--out", tmp_path / "out" / "int8.onnx", check=False)
    _assert_refused(proc, tmp_path, *words)
