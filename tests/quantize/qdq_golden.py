"""Golden sha256s of Q/DQ models, recorded with calib before the flavor registry (commit 7aa5d6d:
`calib.quantize.flavors.quantize_model` and `calib.sensitivity.build_partial`), so that the one
materializer is held to the same bytes for full, bias-corrected and partial models.

Ranges and channel means are fixed functions of the graph (no ONNX Runtime run), so the bytes
depend on calib's code alone. Regenerate (only when a change of bytes is intended, and say so):

    PYTHONPATH=. python tests/quantize/qdq_golden.py > tests/quantize/qdq_golden.json   # checkout root
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

SOURCE = "calib 7aa5d6d (before the flavor registry): flavors.quantize_model, sensitivity.build_partial"
FLAVORS = ("tensorrt", "ort")


def fixed_amax(model: onnx.ModelProto) -> dict[str, float]:
    from calib.quantize.graph import GraphIndex

    return {t: 0.5 + 0.37 * (i % 11) for i, t in enumerate(GraphIndex(model).activations())}


def fixed_means(model: onnx.ModelProto) -> dict[str, list[float]]:
    """Per-channel means for the data input of every weighted op with a constant weight."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    means = {}
    for pos, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        if node.op_type == "Conv":
            channels = w.shape[1] * next((a.i for a in node.attribute if a.name == "group"), 1)
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            channels = w.shape[1]
        else:
            channels = w.shape[0]
        rng = np.random.default_rng(pos)
        means[node.input[0]] = (rng.standard_normal(channels) * 0.5 + 0.2).tolist()
    return means


def sha(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def cases(model: onnx.ModelProto, quantize, partial, layer_ids) -> dict[str, str]:
    """Hashes of the full, bias-corrected and partial models of both flavors. `quantize(model,
    amax, flavor, means)` and `partial(model, amax, flavor, float_layers, quantized_layers, means)`
    adapt the API under test; `layer_ids(model, flavor)` lists its layers."""
    amax, means = fixed_amax(model), fixed_means(model)
    out = {}
    for flavor in FLAVORS:
        ids = layer_ids(model, flavor)
        out[f"{flavor}/full"] = sha(quantize(model, amax, flavor, None))
        out[f"{flavor}/full+means"] = sha(quantize(model, amax, flavor, means))
        out[f"{flavor}/float:first,middle,last"] = sha(partial(model, amax, flavor, [ids[0], ids[len(ids) // 2], ids[-1]], None, None))
        out[f"{flavor}/float:every-other+means"] = sha(partial(model, amax, flavor, ids[::2], None, means))
        out[f"{flavor}/only:second"] = sha(partial(model, amax, flavor, (), [ids[1]], None))
        out[f"{flavor}/layers"] = ",".join(ids)
    return out


def models() -> dict[str, onnx.ModelProto]:
    """The tiny classifiers of tests/conftest.py (numpy-seeded: no torch involved)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("calib_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)
    make_classifier = root.make_classifier

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, classes, size in ((0, 10, 16), (1, 10, 16), (2, 7, 12)):
            out[f"tiny-seed{seed}"] = onnx.load(str(make_classifier(Path(tmp) / "m.onnx", classes, size, seed)))
    return out


def lite0() -> tuple[str, onnx.ModelProto]:
    """EfficientNet-Lite0 as calib prepares it, with the sha256 of that FP32 graph (a different
    torch or exporter may write other bytes: the golden hashes hold for this graph only)."""
    from calib.models import prepared_model, resolve_model

    model = prepared_model(resolve_model("efficientnet_lite0"))
    return sha(model), model


def _old_api():
    from calib.quantize.flavors import quantize_model
    from calib.sensitivity import build_partial, quantizable_layers

    def quantize(model, amax, flavor, means):
        return quantize_model(model, amax, flavor, channel_means=means)[0]

    def partial(model, amax, flavor, float_layers, quantized_layers, means):
        return build_partial(model, amax, flavor, float_layers=float_layers, quantized_layers=quantized_layers,
                             channel_means=means)

    return quantize, partial, lambda m, f: [layer.id for layer in quantizable_layers(m, f)]


def main() -> None:
    quantize, partial, layer_ids = _old_api()
    golden = {"source": SOURCE, "models": {}}
    for name, model in models().items():
        golden["models"][name] = cases(model, quantize, partial, layer_ids)
    digest, model = lite0()
    golden["lite0_fp32_sha256"] = digest
    golden["models"]["efficientnet_lite0"] = cases(model, quantize, partial, layer_ids)
    json.dump(golden, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
