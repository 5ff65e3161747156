"""Fallback to an accuracy budget: meets it with the fewest float layers, reports held-out
figures, and fails in one line when it cannot be met."""

import numpy as np
import onnx
import pytest
from PIL import Image

from calib.backends.ort import OrtRunner
from calib.passes import observe_pass
from calib.calibrators import get_calibrator
from calib.data import Dataset, get_preset
from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError
from calib.passes import evaluate
from calib.commands.run import fallback_report
from calib.report.fallback import render_markdown
from calib.quantize import quantizable_layers
from calib.restore.search import fallback_to_budget
from calib.stats.budget import Budget
from calib.restore.subset import split_search_final
from tests.conftest import has_cuda_ort


class NoiseSource(ImageSource):
    """Seeded random images (smooth enough for a conv net to see structure), labels 0..9."""

    def __init__(self, n: int):
        super().__init__([Sample(str(i), i % 10) for i in range(n)], "noise", f"{n} noise images")

    def open(self, sample: Sample) -> Image.Image:
        rng = np.random.default_rng(int(sample.key))
        small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((20, 20), Image.BILINEAR)


@pytest.fixture()
def setup(tiny_classifier):
    model = onnx.load(str(tiny_classifier))
    data = Dataset.of(NoiseSource(120), get_preset("torchvision", 16))
    cal = get_calibrator("minmax")
    observe_pass(model, data.subset(data.samples[:40]), cal, batch_size=20, workers=0, progress=None)
    amax = {k: r.amax for k, r in cal.compute().items()}
    return model, amax, data.subset(data.samples[40:])


def test_search_and_final_subsets_are_disjoint_and_cover_the_evaluation(setup):
    _, _, evaluation = setup
    search, final = split_search_final(evaluation, seed=0)
    keys_s, keys_f = {s.key for s in search.samples}, {s.key for s in final.samples}
    assert not keys_s & keys_f and keys_s | keys_f == {s.key for s in evaluation.samples}
    assert len(search) == 40 and len(final) == 40
    with pytest.raises(CalibError, match="at least 2"):
        split_search_final(evaluation.subset(evaluation.samples[:1]))


def test_fallback_meets_the_budget_with_the_broken_layer_in_float(setup):
    model, amax, evaluation = setup
    broken = dict(amax, r2=amax["r2"] / 30)
    victim = next(layer.id for layer in quantizable_layers(model, "ort") if "r2" in layer.inputs)
    result = fallback_to_budget(model, broken, "ort", evaluation, Budget(min_agreement=1.0), batch_size=16, workers=0,
                                throughput_seconds=0.05, progress=False)
    s = result.search
    assert s["int8"]["agreement"] < 1.0  # the broken layer costs agreement ...
    assert s["fallback"]["agreement"] == 1.0  # ... and falling back that one layer alone wins it back
    assert result.ranking[0] == victim and result.float_layers == [victim]
    assert result.evaluations <= 2 + int(np.ceil(np.log2(result.layers))) + 1
    t = result.throughput
    assert t["batch_size"] == 32 and t["int8"] > 0 and t["fallback"] > 0 and "cost" in t
    # The lead's wiring: evaluate FP32 and the chosen model on the held-out subset only.
    runners = {"fp32": OrtRunner(model.SerializeToString()), "int8": OrtRunner(result.model.SerializeToString())}
    ev, _ = evaluate(runners, result.final_dataset, 16, workers=0, progress=None)
    d = fallback_report(result, ev)
    assert d["final"]["images"] == len(result.final_dataset) == 40
    assert isinstance(d["final_met"], bool) and d["float_layers"] == result.float_layers
    assert not {x.key for x in result.final_dataset.samples} & {x.key for x in result.search_dataset.samples}
    text = render_markdown(d)
    assert "held-out" in text and victim in text


def test_no_fallback_when_int8_already_meets_the_budget(setup):
    model, amax, evaluation = setup
    result = fallback_to_budget(model, amax, "ort", evaluation, Budget(max_drop=1.0), batch_size=16, workers=0,
                                throughput_seconds=0, progress=False)
    assert result.float_layers == [] and result.evaluations == 1 and result.throughput is None


def test_a_budget_no_fallback_can_reach_is_refused_in_one_line_when_it_is_made():
    # INT8 would have to beat FP32 by 50 points: every layer in float is FP32 itself (drop 0), so
    # no fallback reaches it; a Budget is checked when made, before the search sees it.
    with pytest.raises(CalibError) as err:
        Budget(max_drop=-0.5)
    message = str(err.value)
    assert "\n" not in message and "--max-drop" in message and "-0.5" in message
    for bad in ({"max_drop": 2.0}, {"min_agreement": 1.5}, {"max_drop": float("nan")}, {}):
        with pytest.raises(CalibError):
            Budget(**bad)
    assert Budget(max_drop=0.002).text() == "top-1 drop ≤ 0.20 points"
    assert Budget(0.01, 0.995).as_dict() == {"max_drop": 0.01, "min_agreement": 0.995}
    assert Budget(min_agreement=0.995).meets(0.5, 199 / 200) and not Budget(min_agreement=0.995).meets(0.0, 0.99)
    assert Budget(max_drop=0.01, what="mAP@0.5:0.95").text() == "mAP@0.5:0.95 drop ≤ 1.00 points"


def test_run_reports_the_fallback_model_on_held_out_images_only(tmp_path, tiny_classifier):
    """calib run with a budget: the search and the final figures use disjoint images, and the
    report's accuracy figures are the held-out ones (not the images the search saw)."""
    from calib.commands.run import run
    from calib.session import RunConfig

    cfg = RunConfig(model=str(tiny_classifier), dataset="demo", samples=8, cache_dir=str(tmp_path / "c"),
                    out=str(tmp_path / "out"), batch_size=4, workers=0, progress=False, min_agreement=1.0,
                    html=False, speed_seconds=0)
    r = run(cfg).to_json()
    fb = r["fallback"]
    assert fb["search"]["images"] + fb["final_images"] == 5  # the demo's five evaluation photos
    assert r["eval"]["samples"] == fb["final_images"] == fb["final"]["images"]
    assert r["paired"]["n"] == fb["final_images"]
    assert fb["throughput"] is None   # --speed-seconds 0 skips every speed figure, the fallback's cost too


def test_the_fallback_reports_what_its_float_layers_cost_in_throughput(tmp_path, tiny_classifier):
    from calib.commands.run import run
    from calib.session import RunConfig

    cfg = RunConfig(model=str(tiny_classifier), dataset="demo", samples=8, cache_dir=str(tmp_path / "c"),
                    out=str(tmp_path / "out"), batch_size=4, workers=0, progress=False, min_agreement=1.0,
                    html=False, speed_seconds=0.05)
    t = run(cfg).to_json()["fallback"]["throughput"]
    assert t["fp32"] > 0 and t["int8"] > 0 and t["fallback"] > 0


def test_a_100_point_budget_is_a_valid_verdict_tolerance(tmp_path, tiny_classifier):
    """--max-drop 1 (any loss allowed) reached the verdict as a tolerance of 1.0, which it
    refused with a traceback; --max-drop 0 was read as "no budget" for the verdict."""
    from calib.commands.run import run
    from calib.session import RunConfig

    for budget, tolerance in ((1.0, 0.999), (0.0, 0.001)):
        cfg = RunConfig(model=str(tiny_classifier), dataset="demo", samples=8, cache_dir=str(tmp_path / "c"),
                        out=str(tmp_path / f"out{budget}"), batch_size=4, workers=0, progress=False,
                        max_drop=budget, html=False, speed_seconds=0)
        r = run(cfg).to_json()
        assert r["verdict"]["accuracy"]["tolerance"] == tolerance


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_ort(), reason="needs an NVIDIA GPU with CUDA and onnxruntime-gpu")
def test_the_search_runs_on_the_gpu(setup):
    """The search's images decoded for the GPU (Pillow workers: the CPU path's pixels) and every
    candidate run there: the same broken layer goes back to float."""
    model, amax, evaluation = setup
    broken = dict(amax, r2=amax["r2"] / 30)
    victim = next(layer.id for layer in quantizable_layers(model, "ort") if "r2" in layer.inputs)
    result = fallback_to_budget(model, broken, "ort", evaluation, Budget(min_agreement=1.0), batch_size=16, workers=0,
                                throughput_seconds=0, progress=False, device="cuda:0", decoder="pil")
    assert result.ranking[0] == victim and victim in result.float_layers
