"""Meet an accuracy budget by leaving the most damaging layers in float.

    calib run --max-drop 0.002          # top-1 drop (FP32 − INT8) of at most 0.2 points
    calib run --min-agreement 0.995     # INT8 predicts FP32's class on >= 99.5% of images

The evaluation images are split in two (seeded): a **search** subset, on which the layers are
ranked (`calib.sensitivity`, isolated damage) and candidate models are tried, and a **final**
held-out subset that the search never sees, on which the chosen model is reported. Candidates
are the ranking's prefixes (top-k layers in float); the smallest k that meets the budget is found
by bisection over k (a handful of evaluations instead of one per layer). Every layer in float is
exactly the FP32 model, so a budget that FP32 itself meets on the search subset is always
reachable; one that it misses (e.g. a negative --max-drop that FP32 does not beat) fails with a
one-line CalibError. The cost is reported as ONNX Runtime CPU throughput at batch 32 (`time_runner`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from calib.data import Dataset
from calib.errors import CalibError
from calib.evaluate import top5
from calib.sensitivity import (MEASURE, Images, build_partial, load_images, quantizable_layers, rank_layers,
                               run_logits)
from calib.sqnr import session

STRATEGY = "bisection over k, the number of top-ranked layers left in float"


def check_budget(max_drop: float | None, min_agreement: float | None) -> None:
    if max_drop is None and min_agreement is None:
        raise CalibError("a fallback budget needs --max-drop and/or --min-agreement")
    if max_drop is not None and not (math.isfinite(max_drop) and -1.0 <= max_drop <= 1.0):
        raise CalibError(f"--max-drop is a fraction of top-1 (0.002 = 0.2 points), got {max_drop}")
    if min_agreement is not None and not (math.isfinite(min_agreement) and 0.0 <= min_agreement <= 1.0):
        raise CalibError(f"--min-agreement is a fraction in [0, 1] (0.995 = 99.5%), got {min_agreement}")


def budget_text(b: dict) -> str:
    parts = []
    if b.get("max_drop") is not None:
        parts.append(f"top-1 drop ≤ {100 * b['max_drop']:.2f} points")
    if b.get("min_agreement") is not None:
        parts.append(f"agreement ≥ {100 * b['min_agreement']:.2f}%")
    return " and ".join(parts)


def meets(budget: dict, drop: float, agreement: float) -> bool:
    eps = 1e-12  # fractions of counts: 0.995 must accept 199/200
    return ((budget.get("max_drop") is None or drop <= budget["max_drop"] + eps)
            and (budget.get("min_agreement") is None or agreement >= budget["min_agreement"] - eps))


def split_search_final(evaluation: Dataset, seed: int = 0, search_fraction: float = 0.5,
                       max_search: int | None = 512) -> tuple[Dataset, Dataset]:
    """Disjoint search and final (held-out) subsets of the evaluation images (seeded, each kept
    in dataset order). The search subset is held decoded in memory, hence `max_search`."""
    n = len(evaluation)
    if n < 2:
        raise CalibError(f"a fallback budget needs at least 2 evaluation images (a search and a held-out "
                         f"subset), got {n}")
    k = min(max(1, int(round(n * search_fraction))), n - 1)
    if max_search is not None:
        k = min(k, max_search)
    order = np.random.default_rng(seed + 1).permutation(n)  # not the calibration split's permutation
    search, final = np.sort(order[:k]), np.sort(order[k:])
    return (evaluation.subset([evaluation.samples[i] for i in search]),
            evaluation.subset([evaluation.samples[i] for i in final]))


@dataclass
class FallbackResult:
    model: onnx.ModelProto            # the Q/DQ model with `float_layers` in float
    float_layers: list[str]           # most damaging first
    budget: dict
    search: dict                      # images, fp32_top1, int8 / fallback: {top1, drop, agreement}
    search_dataset: Dataset
    final_dataset: Dataset            # held out: evaluate the final model on this
    ranking: list[str] = field(default_factory=list)
    ranking_images: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    throughput: dict | None = None
    layers: int = 0                   # quantizable layers in the model

    def report(self, ev=None) -> dict:
        """The "fallback" entry of report.json; `ev` is the Evaluation of "fp32" and "int8" (this
        model) on `final_dataset`, which gives the held-out figures."""
        d = {"budget": self.budget, "budget_text": budget_text(self.budget), "float_layers": self.float_layers,
             "layers": self.layers, "search": self.search, "final_images": len(self.final_dataset),
             "strategy": STRATEGY, "measure": MEASURE, "ranking": self.ranking,
             "ranking_images": self.ranking_images, "evaluations": self.evaluations,
             "seconds": round(self.seconds, 1), "throughput": self.throughput,
             "note": "the layers were chosen on the search subset; the final figures come from the held-out "
                     "subset, which the search never saw"}
        if ev is not None:
            fp32, int8 = ev.summary("fp32"), ev.summary("int8")
            agreement = ev.agreement("fp32", "int8")
            d["final"] = {"images": len(ev.keys), "fp32_top1": fp32["top1"], "top1": int8["top1"],
                          "drop": fp32["top1"] - int8["top1"], "agreement": agreement}
            d["final_met"] = meets(self.budget, d["final"]["drop"], agreement)
        return d


def _metrics(fp32_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    a, b = top5(fp32_logits)[:, 0], top5(logits)[:, 0]
    fp32_top1, top1 = float(np.mean(a == labels)), float(np.mean(b == labels))
    return {"top1": top1, "drop": fp32_top1 - top1, "agreement": float(np.mean(a == b))}


def fallback_to_budget(prepared: onnx.ModelProto, amax: dict[str, float], flavor: str, evaluation: Dataset,
                       max_drop: float | None = None, min_agreement: float | None = None, batch_size: int = 32,
                       workers: int | None = None, seed: int = 0, ranking_images: int = 64,
                       max_search_images: int | None = 512, throughput_seconds: float = 2.0,
                       progress: bool = True, channel_means: dict[str, list[float]] | None = None) -> FallbackResult:
    """Leave the fewest top-ranked layers in float so that the search subset meets the budget.

    `channel_means`: the cache's bias-correction means, as given to quantize_model (None: off).
    Returns the model and its `final_dataset`: evaluate FP32 and the model there and pass the
    Evaluation to `result.report(ev)` for the held-out figures. Raises CalibError when even every
    layer in float misses the budget on the search subset.
    """
    check_budget(max_drop, min_agreement)
    budget = {"max_drop": max_drop, "min_agreement": min_agreement}
    start = time.perf_counter()
    search_set, final_set = split_search_final(evaluation, seed, max_search=max_search_images)
    images = load_images(search_set, batch_size, workers, "decoding search images" if progress else None)
    # Candidates run as production runs them (ORT_ENABLE_ALL, integer kernels); a float layer
    # keeps its weight and its input float together, the pattern ONNX Runtime computes right.
    fp32_logits = run_logits(session(prepared, "all"), images, batch_size)
    fp32_top1 = float(np.mean(top5(fp32_logits)[:, 0] == images.labels))
    layers = quantizable_layers(prepared, flavor)
    cache: dict[int, dict] = {}
    models: dict[int, onnx.ModelProto] = {}
    ranking: list[str] = []

    def attempt(k: int) -> dict:
        if k not in cache:
            model = build_partial(prepared, amax, flavor, float_layers=ranking[:k], channel_means=channel_means)
            cache[k] = _metrics(fp32_logits, run_logits(session(model, "all"), images, batch_size), images.labels)
            models[k] = model
        return cache[k]

    int8 = attempt(0)
    search = {"images": len(images), "fp32_top1": fp32_top1, "int8": int8}
    ranked_on = 0
    if meets(budget, int8["drop"], int8["agreement"]):
        k = 0
    else:
        subset = Images(images.images[:ranking_images], images.labels[:ranking_images],
                        images.keys[:ranking_images])
        result = rank_layers(prepared, amax, flavor, subset, batch_size, fp32_logits=fp32_logits[:ranking_images],
                             progress=progress, channel_means=channel_means)
        ranking, ranked_on = result.ranking(), len(subset)
        n = len(ranking)
        everything = attempt(n)
        if not meets(budget, everything["drop"], everything["agreement"]):
            raise CalibError(
                f"the budget ({budget_text(budget)}) cannot be met: even with all {n} layers in float the search "
                f"subset ({len(images)} images) has a top-1 drop of {100 * everything['drop']:.2f} points and "
                f"{100 * everything['agreement']:.2f}% agreement")
        lo, hi = 0, n  # attempt(lo) misses the budget, attempt(hi) meets it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            m = attempt(mid)
            if meets(budget, m["drop"], m["agreement"]):
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
                          time.perf_counter() - start, throughput, len(layers))


def measure_throughput(prepared: onnx.ModelProto, int8: onnx.ModelProto, fallback: onnx.ModelProto,
                       batch_size: int = 32, seconds: float = 2.0) -> dict:
    """Images/s of FP32, all-INT8 and the fallback model with ONNX Runtime (CPU, ORT_ENABLE_ALL)."""
    from calib.backends.base import time_runner
    from calib.backends.ort import OrtRunner

    dims = [d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim]
    shape = tuple(dims[1:])
    out = {"batch_size": batch_size, "backend": "onnxruntime CPU"}
    for name, m in (("int8", int8), ("fallback", fallback), ("fp32", prepared)):
        if name == "fallback" and fallback is int8:
            out[name] = out["int8"]
            continue
        runner = OrtRunner(m.SerializeToString())
        out[name] = round(time_runner(runner, shape, batch_size, seconds=seconds).throughput, 2)
        runner.close()
    out["cost"] = round(1.0 - out["fallback"] / out["int8"], 4) if out["int8"] > 0 else 0.0
    return out


SLOWER_THAN_FP32 = ("the model with fallback runs slower than FP32 itself (switching between float and INT8 "
                    "layers costs more than the INT8 layers save): ship FP32, or try another calibrator first "
                    "(calib compare)")


def slower_than_fp32(t: dict | None) -> bool:
    return bool(t) and t["fallback"] < t["fp32"]


def render_markdown(fb: dict) -> str:
    """Lines for report.md (the lead appends them under the run's table)."""
    s = fb["search"]
    lines = ["", "## Fallback to the accuracy budget", "",
             f"- budget: {fb['budget_text']}",
             f"- search subset: {s['images']} evaluation images"
             + (f" (layers ranked on {fb['ranking_images']} of them)" if fb["ranking_images"] else "")
             + f"; the final figures above come from the other {fb['final_images']} held-out images",
             f"- all INT8 on the search subset: drop {100 * s['int8']['drop']:.2f} points, agreement "
             f"{100 * s['int8']['agreement']:.2f}%",
             f"- with fallback on the search subset: drop {100 * s['fallback']['drop']:.2f} points, agreement "
             f"{100 * s['fallback']['agreement']:.2f}%"]
    if "final" in fb:
        f = fb["final"]
        lines.append(f"- with fallback on the held-out subset: drop {100 * f['drop']:.2f} points, agreement "
                     f"{100 * f['agreement']:.2f}% — budget {'met' if fb['final_met'] else 'NOT met'}")
    lines.append(f"- layers left in float ({len(fb['float_layers'])} of {fb['layers']}): "
                 + (", ".join(f"`{x}`" for x in fb["float_layers"]) or "none"))
    t = fb.get("throughput")
    if t:
        lines.append(f"- INT8 throughput (ONNX Runtime CPU, batch {t['batch_size']}): {t['int8']:.1f} → "
                     f"{t['fallback']:.1f} img/s ({100 * t['cost']:.1f}% cost); FP32 {t['fp32']:.1f} img/s")
        if slower_than_fp32(t):
            lines.append(f"- warning: {SLOWER_THAN_FP32}")
    return "\n".join(lines) + "\n"
