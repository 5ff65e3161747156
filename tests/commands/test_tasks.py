"""A detector through calib calibrate and calib build (issue 21): `--task detect`, a plain folder
of images searched recursively (`--dataset images`), YOLO's letterbox preprocessing, the head left
float by default in both flavors, and TensorRT-RTX's parser and builder taking the tensorrt flavor;
`calib run` judging them against FP32 (against labels: tests/commands/test_task_labels.py), with a
budget on the task metric, and compare refusing them in one line. `calib sensitivity` of a detector
is in tests/commands/test_commands_sensitivity.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image

from calib.errors import CalibError
from calib.session.config import RunConfig
from tests.quantize.head_models import YoloHead, build, export


@pytest.fixture()
def detector(tmp_path):
    path = tmp_path / "yolo.onnx"
    onnx.save(export(build(YoloHead)), str(path))
    return path


@pytest.fixture()
def photos(tmp_path):
    """Images of several sizes and formats in nested folders, no labels anywhere."""
    rng = np.random.default_rng(0)
    root = tmp_path / "frames"
    for i in range(9):
        folder = root / f"cam{i % 3}" / ("night" if i % 2 else "day")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = 40 + 7 * i, 90 - 5 * i
        pixels = (rng.random((h // 4 + 1, w // 4 + 1, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((w, h)).save(folder / f"f{i}.{'png' if i % 2 else 'jpg'}")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "skip.jpg").write_bytes(b"hidden: never read")
    return root


def _config(detector, photos, tmp_path, **kw) -> RunConfig:
    return RunConfig(**{"model": str(detector), "task": "detect", "dataset": "images", "data_dir": str(photos),
                        "samples": 6, "preprocess": "letterbox", "input_size": "64",
                        "cache_dir": str(tmp_path / "caches"), "workers": 0, "progress": False, **kw})


def test_a_folder_of_images_is_searched_recursively_without_labels(photos):
    from calib.data.sources import UNLABELED, image_folder

    source = image_folder(photos)
    assert len(source) == 9 and all(s.label == UNLABELED for s in source.samples)
    assert not any("/." in s.key for s in source.samples)
    with pytest.raises(CalibError, match="not found"):
        image_folder(photos.parent / "no_such_folder")
    (photos.parent / "empty").mkdir()
    with pytest.raises(CalibError, match="no images"):
        image_folder(photos.parent / "empty")


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_gray():
    from calib.data.transforms import get_preset

    pre = get_preset("letterbox", 64)
    wide = Image.new("RGB", (128, 32), (255, 0, 0))
    rows = pre.pixels(wide)
    assert rows.shape == (64, 64, 3)
    assert (rows[32, :, 0] == 255).all() and (rows[0, :, :] == 114).all() and (rows[-1, :, :] == 114).all()
    x = pre(wide)
    assert x.shape == (3, 64, 64) and float(x.max()) == 1.0 and float(x.min()) == 0.0


def test_a_detector_is_calibrated_on_a_folder_and_built_with_its_head_float(detector, photos, tmp_path):
    from calib.commands.build import build as build_model
    from calib.commands.calibrate import calibrate_only
    from calib.quantize import excluded_nodes

    outcome, data = calibrate_only(_config(detector, photos, tmp_path))
    assert outcome.samples == 6 and not outcome.reused and data.calibration.source.id == "images"
    meta = outcome.entry.metadata
    assert meta.key.preprocess["crop"] == "letterbox"
    for flavor in ("tensorrt", "ort"):
        out = tmp_path / f"int8-{flavor}.onnx"
        result = build_model(_config(detector, photos, tmp_path, qdq_flavor=flavor), outcome.entry.path, out)
        assert result.path == out
        built = onnx.load(str(out))
        assert [o.name for o in built.graph.output] == ["out"]   # the outputs as the model gives them
        heads = excluded_nodes(onnx.load(str(detector)), flavor).names("graph output", "head")
        assert heads
        # No head node's output is quantized (a float head may read the dequantized features of the
        # convolution in front of it: that is where the head begins).
        head_outputs = {o for n in built.graph.node if n.name in set(heads) for o in n.output}
        quantized = {n.input[0] for n in built.graph.node if n.op_type == "QuantizeLinear"}
        assert not head_outputs & quantized, (flavor, sorted(head_outputs & quantized))
        assert any(n.op_type == "QuantizeLinear" for n in built.graph.node)
    # The same cache again: reused, byte for byte.
    again, _ = calibrate_only(_config(detector, photos, tmp_path))
    assert again.reused and again.entry.path == outcome.entry.path


def test_tensorrt_rtx_builds_the_detectors_tensorrt_flavor(detector, photos, tmp_path):
    from tests.backends.trt.trt_fakes import rtx_backend

    rtx_backend()   # a skip saying what to install where TensorRT-RTX is missing
    from calib.commands.build import build as build_model
    from calib.commands.calibrate import calibrate_only

    outcome, _ = calibrate_only(_config(detector, photos, tmp_path))
    engine = tmp_path / "yolo.engine"
    build_model(_config(detector, photos, tmp_path, backend="tensorrt-rtx"), outcome.entry.path, engine)
    assert engine.is_file() and engine.stat().st_size > 0


def test_run_judges_a_detector_output_by_output_and_by_map_against_fp32(detector, photos, tmp_path):
    """Issue 21's done-when for one model: `calib run --task detect --dataset images` ends with a
    finite SQNR for every output and the task metric (mAP against FP32's own detections)."""
    import json

    from calib.commands.run import run

    report = run(_config(detector, photos, tmp_path, out=str(tmp_path / "out"), speed_seconds=0))
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["task"] == "detect" and report["task"] == "detect"
    assert [o["name"] for o in saved["outputs"]] == ["out"]
    assert all(o["sqnr_db"] is not None and o["sqnr_db"] > 0 and len(o["sqnr_db_ci95"]) == 2 for o in saved["outputs"])
    m = saved["metric"]
    assert m["reference"] == "fp32" and m["name"].startswith("mAP") and m["fp32"] == 1.0   # FP32 against itself
    assert 0.0 <= m["int8"] <= 1.0 and abs(m["drop"] - (m["fp32"] - m["int8"])) < 1e-6
    assert any(n["reason"] == "head" for n in saved["placement"]["nodes"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| out |" in md and "mAP" in md
    assert (tmp_path / "out" / "int8.onnx").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_compare_and_min_agreement_say_in_one_line_that_they_need_a_classifier(detector, photos, tmp_path):
    """compare and --min-agreement read top-1; sensitivity and --max-drop take every task."""
    from calib.commands.compare import compare_calibrators
    from calib.commands.run import run

    with pytest.raises(CalibError) as info:
        compare_calibrators(_config(detector, photos, tmp_path), ["minmax"], tmp_path / "c")
    assert "\n" not in str(info.value) and "calib run --task detect" in str(info.value)
    with pytest.raises(CalibError, match="--max-drop") as info:
        run(_config(detector, photos, tmp_path, out=str(tmp_path / "b"), min_agreement=0.99))
    assert "\n" not in str(info.value) and "mAP" in str(info.value)
    assert not [p for p in ("c", "b") if (tmp_path / p).exists()]


def test_a_budget_on_the_task_metric_leaves_the_damaging_layer_float_and_is_judged_on_held_out_images(
        detector, photos, tmp_path):
    """`run --task detect --max-drop`: the search ranks the layers by the outputs they hurt and
    bisects on the mAP drop; one scale broken on purpose (its range shrunk 100x) is the layer left
    float; the report's figures, its verdict and the fallback's held-out figures come from the
    images the search never saw."""
    import json

    from calib.cache import load_valid_cache
    from calib.commands.calibrate import calibrate_only
    from calib.commands.run import run

    config = _config(detector, photos, tmp_path, samples=4)
    outcome, _ = calibrate_only(config)
    # Break one activation scale of the class-score branch in the cache (the text line and the sidecar).
    import struct

    entry = outcome.entry
    broken = next(t for t in entry.cache.amax() if "cv3.0" in t)
    lines = entry.path.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(broken + ": "))
    value = struct.unpack(">f", bytes.fromhex(lines[i].split(": ")[1]))[0] / 100
    lines[i] = f"{broken}: {struct.pack('>f', value).hex()}"
    entry.path.write_text("\n".join(lines) + "\n")
    meta = json.loads(entry.sidecar.read_text())
    meta["tensors"][broken].update(scale=value, amax=meta["tensors"][broken]["amax"] / 100)
    entry.sidecar.write_text(json.dumps(meta))
    assert load_valid_cache(entry.path).cache.amax()[broken] == pytest.approx(entry.cache.amax()[broken] / 100)

    out = tmp_path / "budget"
    report = run(_config(detector, photos, tmp_path, samples=4, out=str(out), max_drop=0.05, speed_seconds=0))
    saved = json.loads((out / "report.json").read_text())
    fb = saved["fallback"]
    assert fb["float_layers"] and fb["search"]["metric"].startswith("mAP") and "mAP" in fb["budget_text"]
    assert fb["search"]["fallback"]["drop"] <= 0.05 + 1e-9 < fb["search"]["int8"]["drop"]
    assert fb["final_images"] == saved["eval"]["samples"] == fb["final"]["images"] == saved["metric"]["n"]
    assert fb["final"]["drop"] == pytest.approx(saved["metric"]["drop"], abs=1e-6)
    assert saved["verdict"]["accuracy"]["tolerance"] == 0.05 and saved["verdict"]["float_layers"] == fb["float_layers"]
    assert report["verdict"]["action"] in ("ship_int8_with_float_layers", "ship_fp32", "evaluate_more")
    md = (out / "report.md").read_text()
    assert "Fallback to the budget" in md and saved["verdict"]["sentence"] in md


def test_a_segmenter_runs_as_generic_by_default(tmp_path, photos):
    """--task auto on a model whose output is not class scores is generic: per-output fidelity and
    argmax agreement over the channel axis."""
    import json

    from calib.commands.run import run
    from tests.quantize.head_models import SegHead

    path = tmp_path / "seg.onnx"
    onnx.save(export(build(SegHead)), str(path))
    config = RunConfig(model=str(path), dataset="images", data_dir=str(photos), samples=5, preprocess="letterbox",
                       input_size="64", cache_dir=str(tmp_path / "caches"), workers=0, progress=False,
                       out=str(tmp_path / "out"), speed_seconds=0)
    run(config)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["task"] == "generic" and saved["metric"]["reference"] == "fp32"
    assert all(o["sqnr_db"] is not None for o in saved["outputs"])


def test_a_task_that_does_not_fit_the_model_is_one_line(detector, tmp_path):
    from calib.models import resolve_model

    with pytest.raises(CalibError, match="classifier"):
        resolve_model(str(detector), "letterbox", 64, "classify")
    with pytest.raises(CalibError, match="unknown task"):
        resolve_model(str(detector), "letterbox", 64, "pose-ish")
    with pytest.raises(CalibError, match="does not fit"):
        resolve_model("efficientnet_lite0", None, None, "detect")
    assert resolve_model(str(detector), "letterbox", 64).task == "generic"   # auto: not class scores


def test_exclusions_leave_the_named_nodes_and_op_types_float_and_are_recorded(detector, photos, tmp_path):
    """--exclude REGEX (node names) and --exclude-op TYPE beside the heads: the nodes stay float in
    the built model, the model's provenance records them, and a pattern matching nothing warns."""
    import json
    import warnings

    from calib.commands.build import build as build_model
    from calib.commands.calibrate import calibrate_only

    outcome, _ = calibrate_only(_config(detector, photos, tmp_path))

    def weights_quantized(path):
        m = onnx.load(str(path))
        inits = {t.name for t in m.graph.initializer}
        dq = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        return {n.name for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in dq}

    default = weights_quantized(build_model(_config(detector, photos, tmp_path), outcome.entry.path,
                                            tmp_path / "default.onnx").path)
    target = sorted(n for n in default if n.startswith("/cv2.0/"))
    assert target
    out = build_model(_config(detector, photos, tmp_path, exclude=(r"^/cv2\.0/",)), outcome.entry.path,
                      tmp_path / "excluded.onnx").path
    assert weights_quantized(out) == default - set(target)
    record = json.loads(next(p.value for p in onnx.load(str(out)).metadata_props if p.key == "calib"))
    assert record["excluded"] == {"exclude": [r"^/cv2\.0/"]}
    no_conv = build_model(_config(detector, photos, tmp_path, exclude_ops=("Conv",)), outcome.entry.path,
                          tmp_path / "noconv.onnx").path
    assert not weights_quantized(no_conv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model(_config(detector, photos, tmp_path, exclude=("no_such_node",)), outcome.entry.path,
                    tmp_path / "nomatch.onnx")
    assert any("no_such_node" in str(w.message) for w in caught)


def test_a_task_whose_metric_cannot_read_the_outputs_is_refused_before_any_work(detector, photos, tmp_path):
    """--task segment on a detector: the metric's one line comes before calibration (no cache, no
    output folder), not after the evaluation pass."""
    from calib.commands.run import run

    config = _config(detector, photos, tmp_path, out=str(tmp_path / "out"))
    config.task = "segment"
    with pytest.raises(CalibError) as info:
        run(config)
    assert "\n" not in str(info.value) and "segment" in str(info.value)
    assert not (tmp_path / "out").exists() and not list((tmp_path / "caches").glob("*.cache"))
