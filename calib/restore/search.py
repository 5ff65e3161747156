"""Accuracy restoration, the search: meet an accuracy budget by leaving the most damaging layers
in float.

    calib run --max-drop 0.002          # top-1 drop (FP32 − INT8) of at most 0.2 points
    calib run --min-agreement 0.995     # INT8 predicts FP32's class on >= 99.5% of images

The evaluation images are split in two (seeded): a **search** subset, on which the layers are
ranked (`calib.restore.ranker`, isolated damage) and candidate models are tried, and a **final**
held-out subset that the search never sees, on which the chosen model is reported. Candidates
are the ranking's prefixes (top-k layers in float); the smallest k that meets the budget is found
by bisection over k (a handful of evaluations instead of one per layer). Every layer in float is
exactly the FP32 model, so a budget that FP32 itself meets on the search subset is always
reachable (a `Budget` cannot ask INT8 to beat FP32: a negative --max-drop is refused when it is
made); should even that candidate miss it, the search fails with a one-line CalibError. The cost
is reported as ONNX Runtime CPU throughput at batch 32 (`time_runner`).

The figures a budget is checked on are the scorer's (`calib.restore.score`), the ranking's too:
a classifier's top-1 drop and agreement from the logits (the default, as every release before
scorers computed them), or for a detector, a segmenter or a model of no known task the drop in
its task metric (`calib.metrics`: mAP@0.5:0.95, mIoU, argmax agreement), where `--max-drop` is
the budget and `--min-agreement`, a classifier's figure, is refused in one line:

    scorer = scorer_for("detect")
    fallback_to_budget(prepared, amax, flavor, evaluation, scorer.budget(max_drop=0.01), scorer=scorer)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from calib.data import Dataset
from calib.errors import CalibError
from calib.passes import load_images
from calib.quantize import quantizable_layers, quantize_model
from calib.restore.ranker import rank_layers
from calib.restore.score import ClassifierScorer, Scorer
from calib.restore.subset import split_search_final
from calib.stats.budget import Budget

STRATEGY = "bisection over k, the number of top-ranked layers left in float"
THROUGHPUT_SECONDS = 2.0   # timing of FP32, all-INT8 and the fallback model after a search (0: none)


@dataclass
class FallbackResult:
    model: onnx.ModelProto            # the Q/DQ model with `float_layers` in float
    float_layers: list[str]           # most damaging first
    budget: Budget
    search: dict                      # the scorer's: images, fp32_top1, int8 / fallback: {top1, drop, agreement}
    #                                   (a task: images, task, metric, reference, fp32, int8 / fallback: {value, drop})
    search_dataset: Dataset
    final_dataset: Dataset            # held out: evaluate the final model on this
    ranking: list[str] = field(default_factory=list)
    ranking_images: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    throughput: dict | None = None
    layers: int = 0                   # quantizable layers in the model
    measure: str = ""                 # what the ranking measured (the scorer's `measure`)


def fallback_to_budget(prepared: onnx.ModelProto, amax: dict[str, float], flavor: str, evaluation: Dataset,
                       budget: Budget, batch_size: int = 32,
                       workers: int | None = None, seed: int = 0, ranking_images: int = 64,
                       max_search_images: int | None = 512, throughput_seconds: float = THROUGHPUT_SECONDS,
                       progress: bool = True, channel_means: dict[str, list[float]] | None = None,
                       device: str = "cpu", decoder: str = "nvjpeg", rules: dict | None = None,
                       scorer: Scorer | None = None) -> FallbackResult:
    """Leave the fewest top-ranked layers in float so that the search subset meets the budget.

    `budget`: checked when it was made (`calib.stats.budget.Budget`, in the scorer's figure:
    `scorer.budget(max_drop, min_agreement)`).
    `channel_means`: the cache's bias-correction means, as given to quantize_model (None: off).
    `scorer`: what the ranking and the budget read (`calib.restore.score`; default the
    classifier's; `scorer_for(task, **metric_params)` for another task).
    Returns the model and its `final_dataset`: evaluate FP32 and the model there and pass the
    Evaluation to the run command, which reports the held-out figures. Raises CalibError when even every
    layer in float misses the budget on the search subset.
    """
    scorer = scorer or ClassifierScorer()
    start = time.perf_counter()
    search_set, final_set = split_search_final(evaluation, seed, max_search=max_search_images)
    images = load_images(search_set, batch_size, workers, "decoding search images" if progress else None,
                         device, decoder)
    from calib.backends.ort import OrtRunner

    # Candidates run as the final figures evaluate them (OrtRunner: ONNX Runtime's integer kernels,
    # or the integer-exact graph where it only emulates the flavor); a float layer keeps its weight
    # and its input float together, the pattern ONNX Runtime computes right.
    fp32_outputs = scorer.collect(OrtRunner(prepared, device=device, exact=False), images, batch_size)
    rules = rules or {}   # the user's exclusions (calib.quantize: exclude, exclude_ops)
    layers = quantizable_layers(prepared, flavor, **rules)
    cache: dict[int, dict] = {}
    models: dict[int, onnx.ModelProto] = {}
    ranking: list[str] = []

    def attempt(k: int) -> dict:
        if k not in cache:
            model, _ = quantize_model(prepared, amax, flavor, channel_means=channel_means, float_layers=ranking[:k],
                                      **rules)
            outputs = scorer.collect(OrtRunner(model, device=device), images, batch_size)
            cache[k] = scorer.candidate(fp32_outputs, outputs, images)
            models[k] = model
        return cache[k]

    int8 = attempt(0)
    search = scorer.search_figures(fp32_outputs, images, int8)
    ranked_on = 0
    if meets(budget, int8):
        k = 0
    else:
        subset = images.head(ranking_images)
        result = rank_layers(prepared, amax, flavor, subset, batch_size,
                             fp32_outputs=scorer.head(fp32_outputs, ranking_images), progress=progress,
                             channel_means=channel_means, device=device, rules=rules, scorer=scorer)
        ranking, ranked_on = result.ranking(), len(subset)
        n = len(ranking)
        everything = attempt(n)
        if not meets(budget, everything):
            raise CalibError(
                f"the budget ({budget.text()}) cannot be met: even with all {n} layers in float the "
                f"search subset ({len(images)} images) has {scorer.missed(everything)}")
        lo, hi = 0, n  # attempt(lo) misses the budget, attempt(hi) meets it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            m = attempt(mid)
            if meets(budget, m):
                hi = mid
            else:
                lo = mid
        k = hi
    search["fallback"] = cache[k]
    model = models[k]
    throughput = None
    if throughput_seconds > 0:
        throughput = measure_throughput(prepared, models[0], model, batch_size=32, seconds=throughput_seconds)
    return FallbackResult(model, ranking[:k], budget, search, search_set, final_set, ranking, ranked_on, len(cache),
                          time.perf_counter() - start, throughput, len(layers), scorer.measure)


def meets(budget: Budget, figures: dict) -> bool:
    """A candidate's figures (`Scorer.candidate`: its drop, and a classifier's agreement) within
    the budget."""
    return budget.meets(figures["drop"], figures.get("agreement", 1.0))


def measure_throughput(prepared: onnx.ModelProto, int8: onnx.ModelProto, fallback: onnx.ModelProto,
                       batch_size: int = 32, seconds: float = 2.0) -> dict:
    """Images/s of FP32, all-INT8 and the fallback model with ONNX Runtime (CPU, ORT_ENABLE_ALL)."""
    from calib.backends.base import time_runner
    from calib.backends.ort import OrtRunner
    from calib.models import image_chw

    shape = image_chw(prepared)
    out = {"batch_size": batch_size, "backend": "onnxruntime CPU"}
    for name, m in (("int8", int8), ("fallback", fallback), ("fp32", prepared)):
        if name == "fallback" and fallback is int8:
            out[name] = out["int8"]
            continue
        runner = OrtRunner(m, exact=False)   # speed: the model as deployed
        out[name] = round(time_runner(runner, shape, batch_size, seconds=seconds).throughput, 2)
        runner.close()
    out["cost"] = round(1.0 - out["fallback"] / out["int8"], 4) if out["int8"] > 0 else 0.0
    return out


def slower_than_fp32(t: dict | None) -> bool:
    """True when the model with fallback runs slower than FP32 itself."""
    return bool(t) and t["fallback"] < t["fp32"]
