"""A BERT-like model (tests/corpus/task_archs.py: int64 input_ids and attention_mask, two transformer
layers with LayerNorm, Softmax and GELU) fed named arrays from a folder of .npz files (issue 21,
"Calibration and evaluation data"): `calib run --task generic --dataset npz` in both flavors,
`calib calibrate` and `calib build` (and TensorRT-RTX's parser and builder on the tensorrt flavor
where it is installed), the integer inputs never observed nor quantized, a batch-1 export run at
its batch, and a dataset reader registered in-process through the same pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.errors import CalibError
from calib.session.config import RunConfig
from tests.test_cli import assert_one_line_error, calib

LENGTH = 16
SHAPE = ["--input-shape", f"input_ids={LENGTH}"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    from tests.corpus.task_archs import build_bert, export_bert

    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    onnx.save(export_bert(build_bert(), LENGTH), str(path))
    return path


@pytest.fixture(scope="module")
def feeds(tmp_path_factory) -> Path:
    """40 samples: 8 files of one sample each, then 4 files of a batch of 8 in a subfolder."""
    from tests.corpus.task_archs import token_batches

    root = tmp_path_factory.mktemp("feeds")
    (root / "batches").mkdir()
    data = token_batches(40, LENGTH)
    for i in range(8):
        np.savez(root / f"sample{i:02d}.npz", **{k: v[i] for k, v in data.items()})
    for j in range(4):
        np.savez(root / "batches" / f"b{j}.npz", **{k: v[8 + 8 * j:16 + 8 * j] for k, v in data.items()})
    return root


def _assert_no_integer_tensor_is_quantized(path: Path) -> None:
    """Every QuantizeLinear reads a float tensor, and no tensor computed from the integer inputs
    alone (ids, the mask and its arithmetic before the Cast to float) has a Q/DQ."""
    from calib.quantize.graph import FLOAT_TYPES, GraphIndex

    model = onnx.load(str(path))
    index = GraphIndex(model)
    quantized = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized
    assert all(index.elem_type(t) in FLOAT_TYPES for t in quantized), \
        [(t, index.elem_type(t)) for t in quantized if index.elem_type(t) not in FLOAT_TYPES]
    assert not {"input_ids", "attention_mask"} & set(quantized)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("flavor", ["tensorrt", "ort"])
def test_run_judges_a_bert_like_model_fed_npz_files_in_both_flavors(bert, feeds, tmp_path, flavor):
    args = ["--qdq-flavor", "tensorrt"] if flavor == "tensorrt" else []   # ort: the default
    proc = calib("run", "--model", bert, "--task", "generic", "--dataset", "npz", "--data-dir", feeds, *SHAPE,
                 "--samples", 16, "--cache-dir", tmp_path / "caches", "--out", tmp_path / "out", *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["task"] == "generic" and r["qdq_flavor"] == flavor and r["decode_path"] == "arrays"
    assert [o["name"] for o in r["outputs"]] == ["last_hidden_state", "logits"]
    for o in r["outputs"]:
        assert o["sqnr_db"] is not None and math.isfinite(o["sqnr_db"]) and o["sqnr_db"] > 15, o
    assert r["outputs"][0]["shape"] == [24, LENGTH, 32] and r["outputs"][1]["shape"] == [24, 3]
    assert r["calibration"]["samples"] == 16 and r["eval"]["samples"] == 24 and r["eval"]["disjoint_from_calibration"]
    assert r["metric"]["reference"] == "fp32" and r["preprocess"]["inputs"][0] == {
        "name": "input_ids", "dtype": "int64", "shape": [LENGTH]}
    assert r["calibration_data"]["source"] == "npz"
    _assert_no_integer_tensor_is_quantized(tmp_path / "out" / "int8.onnx")
    sidecar = json.loads(next((tmp_path / "caches").glob("*.json")).read_text())
    assert not {"input_ids", "attention_mask"} & set(sidecar["tensors"])   # never observed
    assert [i["name"] for i in sidecar["model_inputs"]] == ["input_ids", "attention_mask"]


def test_calibrate_and_build_both_flavors_and_tensorrt_rtx(bert, feeds, tmp_path):
    caches = tmp_path / "caches"
    proc = calib("calibrate", "--model", bert, "--dataset", "npz", "--data-dir", feeds, *SHAPE, "--samples", 12,
                 "--cache-dir", caches)
    cache = Path(proc.stdout.strip().splitlines()[-1])
    meta = json.loads(cache.with_suffix(".json").read_text())
    assert meta["samples"] == 12 and meta["key"]["preprocess"]["decode"] == "arrays"
    again = calib("calibrate", "--model", bert, "--dataset", "npz", "--data-dir", feeds, *SHAPE, "--samples", 12,
                  "--cache-dir", caches)
    assert again.stdout.strip().splitlines()[-1] == str(cache)   # the same key: reused
    for flavor in ("ort", "tensorrt"):
        out = tmp_path / f"bert-{flavor}.onnx"
        calib("build", "--model", bert, *SHAPE, "--cache", cache, "--qdq-flavor", flavor, "--out", out)
        _assert_no_integer_tensor_is_quantized(out)
        import onnxruntime as ort

        from tests.corpus.task_archs import token_batches

        feed = token_batches(3, LENGTH, seed=5)
        outs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)
        assert outs[0].shape == (3, LENGTH, 32) and np.isfinite(outs[1]).all()
    from calib.backends import get_backend
    from calib.errors import MissingDependency

    try:
        get_backend("tensorrt-rtx")
    except MissingDependency as e:
        pytest.skip(f"TensorRT-RTX is not installed here ({e})")
    engine = tmp_path / "bert.engine"
    proc = calib("build", "--model", bert, *SHAPE, "--cache", cache, "--backend", "tensorrt-rtx", "--out", engine,
                 "--max-batch", 8)
    side = json.loads(Path(str(engine) + ".calib.json").read_text())
    assert engine.stat().st_size > 0 and side["batch"] == {"min": 1, "opt": 8, "max": 8} and side["strongly_typed"]
    _assert_no_integer_tensor_is_quantized(tmp_path / "bert.qdq.onnx")


def test_tensorrt_rtx_parses_and_builds_the_tensorrt_flavor_with_a_profile_for_each_input(bert, feeds, tmp_path):
    """TensorRT-RTX's own parser and builder (ahead of time for SM 8.9, no GPU), as the corpus tests
    call them: the tensorrt flavor of the BERT-like model, one profile over both int64 inputs."""
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed "
                              "(pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")
    from calib.commands.build import build
    from calib.commands.calibrate import calibrate_only

    config = RunConfig(model=str(bert), dataset="npz", data_dir=str(feeds), input_shape=(f"input_ids={LENGTH}",),
                       samples=8, cache_dir=str(tmp_path / "c"), progress=False, qdq_flavor="tensorrt")
    outcome, _ = calibrate_only(config)
    qdq = tmp_path / "bert-trt.onnx"
    build(config, outcome.entry.path, qdq)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(qdq)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    assert names == ["input_ids", "attention_mask"]
    layers = {network.get_layer(i).type.name for i in range(network.num_layers)}
    assert "QUANTIZE" in layers and "DEQUANTIZE" in layers
    cfg = builder.create_builder_config()
    cfg.num_compute_capabilities = 1
    cfg.set_compute_capability(trt.ComputeCapability.SM89, 0)
    profile = builder.create_optimization_profile()
    for name in names:
        profile.set_shape(name, (1, LENGTH), (4, LENGTH), (8, LENGTH))
    cfg.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, cfg) is not None


def test_a_batch_one_export_is_calibrated_and_evaluated_at_batch_1(feeds, tmp_path):
    from tests.corpus.task_archs import build_bert, export_bert

    path = tmp_path / "bert-b1.onnx"
    onnx.save(export_bert(build_bert(), LENGTH, fixed_batch=1, fixed_length=True), str(path))
    proc = calib("run", "--model", path, "--dataset", "npz", "--data-dir", feeds, "--samples", 8, "--eval-samples", 6,
                 "--cache-dir", tmp_path / "c", "--out", tmp_path / "out", "--no-html")
    warned = [line for line in proc.stderr.splitlines() if "fixes its batch size at 1" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ")
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["eval"]["samples"] == 6 and all(math.isfinite(o["sqnr_db"]) for o in r["outputs"])
    dims = [d.dim_value for d in onnx.load(str(tmp_path / "out" / "int8.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, LENGTH]


def test_a_batched_export_of_8_runs_its_short_last_batch_padded(bert, tmp_path):
    """A model whose file fixes the batch at 8 gets 12 samples as a batch of 8 and one of 4 padded
    to 8 (the padding's outputs never reach the statistics or the metric)."""
    from tests.corpus.task_archs import build_bert, export_bert, token_batches

    path = tmp_path / "bert-b8.onnx"
    onnx.save(export_bert(build_bert(), LENGTH, fixed_batch=8, fixed_length=True), str(path))
    root = tmp_path / "f"
    root.mkdir()
    np.savez(root / "all.npz", **token_batches(24, LENGTH, seed=2))
    from calib.commands.run import run

    with pytest.warns(UserWarning, match="fixes its batch size at 8"):
        report = run(RunConfig(model=str(path), dataset="npz", data_dir=str(root), samples=12, progress=False,
                               cache_dir=str(tmp_path / "c"), out=str(tmp_path / "out"), html=False))
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["calibration"]["samples"] == 12 and saved["eval"]["samples"] == 12
    assert saved["outputs"][1]["shape"] == [12, 3] and report["task"] == "generic"


def test_a_reader_registered_in_process_feeds_the_same_pass(bert, tmp_path):
    """`--dataset NAME` picks a registered reader; it gets --data-dir and the model's inputs, and its
    samples go through the calibration pass and the evaluation like a folder's."""
    from calib.commands.run import run
    from calib.data.readers import DataReader, _registry, register_reader
    from tests.corpus.task_archs import token_batches

    seen = {}

    @register_reader
    class Tokens(DataReader):
        name = "toy-tokens"

        def __init__(self, data_dir=None, inputs=()):
            super().__init__(data_dir, inputs)
            seen["args"] = (data_dir, [(i.name, i.shape) for i in inputs])
            self.batches = [token_batches(4, LENGTH, seed=s) for s in range(6)]

        def get_next(self):
            return self.batches.pop(0) if self.batches else None

    try:
        report = run(RunConfig(model=str(bert), dataset="toy-tokens", data_dir=str(tmp_path), samples=8,
                               input_shape=(f"input_ids={LENGTH}",), progress=False, cache_dir=str(tmp_path / "c"),
                               out=str(tmp_path / "out"), html=False, qdq_flavor="tensorrt"))
    finally:
        _registry._registered.pop("toy-tokens", None)
    assert seen["args"] == (str(tmp_path), [("input_ids", (LENGTH,)), ("attention_mask", (LENGTH,))])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["calibration"]["samples"] == 8 and saved["eval"]["samples"] == 16
    assert saved["calibration_data"]["source"] == "toy-tokens" and report["task"] == "generic"
    assert all(math.isfinite(o["sqnr_db"]) for o in saved["outputs"])


def test_compare_sensitivity_and_budgets_refuse_a_model_fed_arrays_in_one_line(bert, feeds, tmp_path):
    for args in (["compare", "--calibrators", "minmax"], ["sensitivity"], ["run", "--max-drop", "0.01"]):
        proc = calib(*args, "--model", bert, "--dataset", "npz", "--data-dir", feeds, *SHAPE, "--samples", 8,
                     "--cache-dir", tmp_path / "c", "--out", tmp_path / "o", check=False)
        assert_one_line_error(proc, "fed named arrays", "calib run --task generic")
        assert proc.returncode == 2 and not (tmp_path / "o").exists()


def test_bench_times_the_named_inputs(bert):
    proc = calib("bench", "--model", bert, *SHAPE, "--batch-sizes", "1,4", "--seconds", 0.05, "--json")
    rows = json.loads(proc.stdout)
    assert [r["batch_size"] for r in rows] == [1, 4] and all(r["throughput"] > 0 for r in rows)
    with pytest.raises(CalibError, match="dynamic dimension 'sequence'"):
        from calib.commands.bench import bench

        bench(RunConfig(model=str(bert)), [1], 0.05)


def test_a_float_input_is_observed_by_name_and_an_integer_one_never(tmp_path):
    """A model fed named arrays whose float input is quantized (it feeds a MatMul with constant
    weights): the calibration pass observes it by name from the batch's arrays; its int64 input
    (an embedding's indices) is passed through, in no cache and under no Q/DQ."""
    from onnx import TensorProto, helper, numpy_helper

    from calib.commands.build import build
    from calib.commands.calibrate import calibrate_only

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["feat", "w"], ["proj"]), helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Add", ["proj", "emb"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 8]),
                                            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])], inits)
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    root = tmp_path / "f"
    root.mkdir()
    for i in range(3):
        np.savez(root / f"{i}.npz", feat=rng.standard_normal((4, 8)) * (i + 1), ids=rng.integers(0, 10, 4))
    config = RunConfig(model=str(path), dataset="npz", data_dir=str(root), cache_dir=str(tmp_path / "c"),
                       progress=False, qdq_flavor="tensorrt")
    outcome, plan = calibrate_only(config)
    tensors = outcome.entry.metadata.tensors
    assert len(plan.calibration) == 12 and "feat" in tensors and "ids" not in tensors
    expected = max(float(np.abs(np.load(root / f"{i}.npz")["feat"].astype(np.float32)).max()) for i in range(3))
    assert tensors["feat"]["amax"] == pytest.approx(expected, rel=1e-6)   # every row of every file observed
    build(config, outcome.entry.path, tmp_path / "int8.onnx")
    _quantized = [n.input[0] for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node if n.op_type == "QuantizeLinear"]
    assert "feat" in _quantized and "ids" not in _quantized
