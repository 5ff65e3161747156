"""The old ONNX model-zoo graphs that ship in the onnx wheel (`onnx/backend/test/data/light`): IR 3,
opset 9, every initializer also a graph input, weights made by ConstantOfShape (all 0.02), fixed
batch 1, outputs (1, 1000) or (1, 1000, 1, 1). The weights are constant, so only the mechanics
count: prepared, calibrated through calib.passes.observe_pass on two demo photos, planned and quantized in
both flavors, run by ONNX Runtime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.calibrators import get_calibrator
from calib.passes import observe_pass
from calib.data import Dataset
from calib.data.demo import DemoSource
from calib.data.transforms import torchvision_imagenet
from calib.onnx_io import load_model, ort_session
from calib.quantize import flavor_names, get_flavor, plan_for, quantize_model
from calib.quantize.graph import GraphIndex
from calib.models import prepared_model, resolve_model

from corpus_pipeline import not_float, quantized_tensor_types

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = sorted(LIGHT.glob("*.onnx"))
# 61-144 million constant weights each (AlexNet, VGG-19, ZFNet-512): 9-20 s and up to 3.4 GB each
# on 2 cores, too much for every CI run; CALIB_TEST_LARGE_ZOO=1 runs them (they pass).
LARGE = {"light_bvlc_alexnet", "light_vgg19", "light_zfnet512"}


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_old_model_zoo_graph_goes_through_both_flavors(path):
    if path.stem in LARGE and not os.environ.get("CALIB_TEST_LARGE_ZOO"):
        pytest.skip(f"{path.stem}: over 60M constant weights (9-20 s, up to 3.4 GB); CALIB_TEST_LARGE_ZOO=1 runs it")
    raw = load_model(path)
    inits = {i.name for i in raw.graph.initializer}
    assert raw.ir_version < 4 and any(i.name in inits for i in raw.graph.input)  # what the zoo wrote
    prepared = prepared_model(resolve_model(str(path)))  # calib's own intake: IR<4, opset 9, weight inputs
    index = GraphIndex(prepared)
    [image] = index.graph_inputs
    assert len(prepared.graph.input) == 1 and prepared.opset_import[0].version >= 13
    plans = {f: plan_for(prepared, f) for f in flavor_names()}
    for plan in plans.values():
        assert plan.activations and plan.weights and not not_float(plan.activations, index)
    photos = DemoSource(variants=False)
    data = Dataset.of(photos, torchvision_imagenet(224)).subset(photos.samples[:2])
    minmax = get_calibrator("minmax")
    need = list(dict.fromkeys(t for p in plans.values() for t in p.activations))
    result = observe_pass(prepared, data, minmax, batch_size=1, workers=0, progress=None, tensors=need)
    assert result.images == 2 and set(result.tensors) == set(need)
    amax = {t: r.amax for t, r in minmax.compute().items()}
    x = np.stack([torchvision_imagenet(224)(photos.open(s)) for s in photos.samples[:1]])
    fp32 = ort_session(prepared, "basic").run(None, {image: x})[0]
    for flavor in flavor_names():
        qdq, missing = quantize_model(prepared, amax, flavor)
        assert missing == [] and not not_float(quantized_tensor_types(qdq, index), index)
        level = "all" if get_flavor(flavor).default_backend == "ort" else "basic"
        y = ort_session(qdq, level).run(None, {image: x})[0]
        assert y.shape == fp32.shape and np.isfinite(y).all()
