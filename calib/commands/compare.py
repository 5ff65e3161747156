"""`calib compare`: several calibrators on the same model and data, side by side.

    calibrate each (reusing caches; the missing ones share ONE pass over the calibration images:
    one TensorStatistics serves every calibrator) -> build each INT8 model from its cache as read
    back -> evaluate FP32 and every INT8 model on the same images (one decode per batch) ->
    per-tensor SQNR against FP32 on a few evaluation images -> compare.json, compare.md,
    report.html (self-contained), int8-<calibrator>.onnx.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calib.cache import CacheStore
from calib.calibration import (CalibrationOutcome, cache_key, calibrated_tensors, save_calibration,
                               weighted_inputs)
from calib.calibrators import TensorStatistics, calibrator_class, get_calibrator
from calib.calibrators.channel_means import ChannelMeans, Observers
from calib.collect import collect
from calib.data import Dataset, SkipLog, iter_batches
from calib.data.classes import class_name
from calib.errors import CalibError
from calib.fsutil import atomic_write_text
from calib.quantize.flavors import quantize_model, required_tensors
from calib.sqnr import SqnrAccumulator, finite_or_none, int8_view, session, with_outputs

DEFAULT_CALIBRATORS = ("entropy", "minmax", "percentile", "mse")


# ----------------------------------------------------------------------------- calibration
def calibrator_params_for(name: str, params: dict) -> dict:
    """The subset of command-line calibrator parameters that `name` accepts (--percentile
    applies to the percentile calibrator only)."""
    accepted = calibrator_class(name).defaults
    return {k: v for k, v in params.items() if k in accepted}


@dataclass
class SharedCalibration:
    outcomes: dict[str, CalibrationOutcome]
    collect_seconds: float            # the one shared pass (0 when every cache was reused)
    compute_seconds: dict[str, float]  # each fresh calibrator's compute() after it
    stats: TensorStatistics | None    # the shared statistics, when a pass ran


def calibrate_many(model, prepared: onnx.ModelProto, dataset: Dataset, names: list[str], store: CacheStore,
                   calibrator_params: dict | None = None, batch_size: int = 4, workers: int | None = None,
                   recalibrate: bool = False, progress: bool = True) -> SharedCalibration:
    """Reuse every matching cache; calibrate the others in ONE collection pass whose
    TensorStatistics all of them read, then save each one's cache."""
    params = calibrator_params or {}
    outcomes: dict[str, CalibrationOutcome] = {}
    fresh: list[str] = []
    for name in names:
        probe = get_calibrator(name, **calibrator_params_for(name, params))
        if not recalibrate:
            start = time.perf_counter()
            found = store.find(cache_key(model, dataset, probe))
            if found is not None:
                outcomes[name] = CalibrationOutcome(found, True, time.perf_counter() - start,
                                                    found.metadata.samples, [])
                continue
        fresh.append(name)
    if not fresh:
        return SharedCalibration(outcomes, 0.0, {}, None)
    stats = TensorStatistics(histogram=True)  # the plots want histograms even for minmax
    calibrators = [get_calibrator(n, stats, **calibrator_params_for(n, params)) for n in fresh]
    means = ChannelMeans(weighted_inputs(prepared))  # the same observers and tensors as calibrate()
    result = collect(prepared, dataset, Observers(stats, means), batch_size=batch_size, workers=workers,
                     progress=f"calibrating ({', '.join(fresh)})" if progress else None,
                     tensors=calibrated_tensors(prepared))
    if result.images == 0:
        raise CalibError(f"no calibration image could be decoded from {dataset.source.description}")
    compute_seconds = {}
    channel_means = means.means()
    for cal in calibrators:
        start = time.perf_counter()
        # Metadata seconds: the shared pass plus this calibrator's own computation.
        outcome = save_calibration(model, dataset, cal, store, result.images, result.skipped, result.tensors,
                                   batch_size, result.seconds, channel_means)
        compute_seconds[cal.name] = time.perf_counter() - start
        outcome.seconds = result.seconds + compute_seconds[cal.name]
        outcomes[cal.name] = outcome
    return SharedCalibration({n: outcomes[n] for n in names}, result.seconds, compute_seconds, stats)


# ----------------------------------------------------------------------------- histograms
def tensor_histograms(prepared: onnx.ModelProto, dataset: Dataset, tensors: list[str], batch_size: int = 16,
                      workers: int | None = None, limit: int | None = None,
                      progress: str | None = None) -> tuple[TensorStatistics, int]:
    """Histograms of |x| of a few FP32 tensors over (the first `limit` images of) `dataset`,
    for plots when the calibration statistics are not at hand (caches were reused)."""
    stats = TensorStatistics(histogram=True)
    sess = session(with_outputs(prepared, tensors), "all")
    input_name = sess.get_inputs()[0].name
    subset = dataset if limit is None else dataset.subset(dataset.samples[:limit])
    count = 0
    for batch in iter_batches(subset, batch_size, workers=workers, progress=progress, skips=SkipLog()):
        for name, value in zip(tensors, sess.run(tensors, {input_name: batch.images})):
            stats.observe(name, value)
        count += len(batch.keys)
    return stats, count


def pick_tensors(amaxes: dict[str, dict[str, float]], order: list[str], peaks: dict[str, float] | None = None,
                 count: int = 6, sqnr: dict[str, dict[str, float | None]] | None = None) -> list[str]:
    """The tensors worth a histogram, returned in graph order: the first and the last quantized
    tensor; then, with several calibrators, the two whose SQNR differs most between them (when
    `sqnr` is given) and those whose thresholds differ most (largest max/min amax ratio); with a
    single calibrator, its two lowest-SQNR tensors and those it clips hardest (smallest amax /
    max|x|)."""
    tensors = [t for t in order if all(t in a for a in amaxes.values())]
    if not tensors:
        return []
    picked = [tensors[0], tensors[-1]]

    def add(ranked: list[str], n: int) -> None:
        for t in ranked:
            if n <= 0 or len(picked) >= count:
                return
            if t not in picked:
                picked.append(t)
                n -= 1

    if sqnr:
        def score(t: str) -> float:
            values = [s[t] for s in sqnr.values() if s.get(t) is not None]
            if not values:
                return -math.inf
            return max(values) - min(values) if len(sqnr) > 1 else -min(values)
        add(sorted((t for t in tensors if score(t) > -math.inf), key=score, reverse=True), 2)

    def spread(t: str) -> float:
        values = [a[t] for a in amaxes.values()]
        if len(values) > 1:
            lo, hi = min(values), max(values)
            return math.inf if lo <= 0 < hi else (hi / lo if lo > 0 else 1.0)
        peak = (peaks or {}).get(t, 0.0)
        return peak / values[0] if values[0] > 0 and peak > 0 else 1.0

    add(sorted(tensors, key=spread, reverse=True), count)
    return [t for t in tensors if t in picked]


def histogram_figures(stats: TensorStatistics, tensors: list[str], thresholds: dict[str, dict[str, float]],
                      chosen: str | None) -> list[dict]:
    """[{tensor, png, thresholds}] for the report, from statistics with histograms."""
    from calib.report.plots import colors, histogram

    palette = colors(list(thresholds))
    out = []
    for t in tensors:
        if t not in stats:
            continue
        counts, edges = stats.histogram(t)
        th = {cal: a[t] for cal, a in thresholds.items() if t in a}
        s = stats.summary(t)
        out.append({"tensor": t, "thresholds": th, "max_abs": s.peak,
                    "png": histogram(t, counts, edges, th, chosen, palette)})
    return out


# ----------------------------------------------------------------------------- SQNR
def activation_sqnr(prepared: onnx.ModelProto, qdq_models: dict[str, onnx.ModelProto], dataset: Dataset,
                    tensors: list[str], batch_size: int = 4, workers: int | None = None,
                    progress: str | None = None) -> dict[str, dict[str, float]]:
    """Per-tensor SQNR (dB) of each INT8 model against FP32 on `dataset` (decoded once for all).

    The same tensors are exposed in the FP32 model and in each Q/DQ model; in the Q/DQ model we
    read each tensor's DequantizeLinear output (see `calib.sqnr.int8_view`). The Q/DQ models run
    under ORT_ENABLE_BASIC so the Q/DQ nodes stay as written (simulated INT8, no fusion). The
    logits (the model output) are included under their own name. One Q/DQ session at a time,
    without memory arenas, `batch_size` images per run: peak memory stays ~2 x batch_size x the
    activations of one image.
    """
    from calib.sensitivity import load_images

    logits = prepared.graph.output[0].name
    names = [t for t in tensors if t != logits] + [logits]
    images = load_images(dataset, batch_size, workers, progress)
    fp32 = session(with_outputs(prepared, names), "all", arena=False)
    input_name = fp32.get_inputs()[0].name
    out = {}
    for cal, q in qdq_models.items():
        view = int8_view(q, names)
        view[logits] = q.graph.output[0].name
        wanted = [t for t in names if t in view]
        int8 = session(with_outputs(q, [view[t] for t in wanted]), "basic", arena=False)
        acc = SqnrAccumulator()
        for batch in images.batches(batch_size):
            ref = dict(zip(names, fp32.run(names, {input_name: batch})))
            for t, y in zip(wanted, int8.run([view[t] for t in wanted], {input_name: batch})):
                acc.add(t, ref[t], y)
            del ref
        out[cal] = acc.result()
        del int8
    return out


# ----------------------------------------------------------------------------- classes
def class_changes(labels: np.ndarray, fp32_top1: np.ndarray, int8_top1: np.ndarray, imagenet: bool = True,
                  top: int = 12) -> list[dict]:
    """Classes whose top-1 accuracy changed most from FP32 to INT8 (largest |change| first)."""
    rows = []
    for c in np.unique(labels):
        mask = labels == c
        n = int(mask.sum())
        a, b = int(np.sum(fp32_top1[mask] == c)), int(np.sum(int8_top1[mask] == c))
        if a == b:
            continue
        try:
            name = class_name(int(c)) if imagenet else str(int(c))
        except IndexError:
            name = str(int(c))
        rows.append({"class": int(c), "name": name, "images": n, "fp32_correct": a, "int8_correct": b,
                     "fp32_top1": a / n, "int8_top1": b / n, "change": (b - a) / n})
    rows.sort(key=lambda r: (-abs(r["change"]), -r["images"], r["class"]))
    return rows[:top]


# ----------------------------------------------------------------------------- compare
def compare(config, calibrators: list[str] | tuple[str, ...] = DEFAULT_CALIBRATORS, out: Path | None = None,
            chosen: str | None = None, sqnr_images: int = 16, histogram_tensors: int = 6,
            histogram_samples: int | None = None) -> dict:
    """Compare `calibrators` on `config`'s model and data (the options of `calib run`; its
    `calibrator` field is ignored). Writes into `out` (staged); returns the compare.json dict.

    `chosen`: the calibrator the detailed sections show (default: best agreement with FP32).
    `sqnr_images`: evaluation images for the per-tensor SQNR. `histogram_samples`: when every
    cache was reused, recollect the plotted tensors' histograms on this many calibration
    images (None: all of them).
    """
    from calib.backends import get_backend
    from calib.cache import CacheStore
    from calib.pipeline import bias_means, evaluate_models, setup, staged_output
    from calib.report.html import write_compare_html

    names = list(dict.fromkeys(c.strip() for c in calibrators if c.strip()))
    if not names:
        raise CalibError("--calibrators needs at least one calibrator")
    if "fp32" in names:
        raise CalibError("'fp32' is not a calibrator")
    for n in names:
        calibrator_class(n)  # unknown names fail here, before any work
    if chosen is not None and chosen not in names:
        raise CalibError(f"--chosen {chosen} is not one of the compared calibrators ({', '.join(names)})")
    backend = get_backend(config.backend)
    s = setup(config, out, "compare")
    model, flavor, data, prepared, out = s.model, s.flavor, s.data, s.prepared, s.out
    started = time.perf_counter()
    with staged_output(out) as stage:
        shared = calibrate_many(model, prepared, data.calibration, names, CacheStore(config.cache_dir),
                                config.calibrator_params, config.calib_batch_size, config.workers,
                                config.recalibrate, config.progress)
        amaxes = {n: shared.outcomes[n].entry.cache.amax() for n in names}
        qdq = {}
        onnx_models = {"fp32": model.path}
        for n in names:
            qdq[n], _ = quantize_model(prepared, amaxes[n], flavor,
                                       channel_means=bias_means(shared.outcomes[n].entry, config.bias_correction))
            onnx_models[n] = stage / f"int8-{n}.onnx"
            onnx.save(qdq[n], str(onnx_models[n]))
        ev, artifacts = evaluate_models(backend, onnx_models, data.evaluation, stage, config,
                                        stems={n: f"int8-{n}" for n in names})
        fp32 = ev.summary("fp32")
        rows = {}
        for n in names:
            o = shared.outcomes[n]
            s = ev.summary(n)
            rows[n] = {"top1": s["top1"], "top5": s["top5"], "top1_drop": fp32["top1"] - s["top1"],
                       "agreement": ev.agreement("fp32", n),
                       # a reused cache: the seconds its calibration took when it was made
                       "calibration_seconds": round(o.entry.metadata.seconds if o.reused and o.entry.metadata
                                                    else o.seconds, 3),
                       "reused": o.reused, "cache": str(o.entry.path), "int8_model": str(out / artifacts[n].name),
                       "params": o.entry.metadata.key.calibrator_params if o.entry.metadata else {}}
        # Per-tensor SQNR on the first few evaluation images, for every calibrator.
        order = [t for t in required_tensors(prepared, flavor) if all(t in a for a in amaxes.values())]
        sqnr_set = data.evaluation.subset(data.evaluation.samples[:max(1, sqnr_images)])
        sqnr = activation_sqnr(prepared, qdq, sqnr_set, order, min(config.batch_size, 4), config.workers,
                               "SQNR" if config.progress else None)
        logits_name = prepared.graph.output[0].name
        logits_sqnr = {n: sqnr[n].pop(logits_name, math.inf) for n in names}
        for n in names:
            rows[n]["logits_sqnr_db"] = finite_or_none(logits_sqnr[n])
        if chosen is None:
            # Best agreement; ties (common on few images) go to the higher logits SQNR.
            chosen = max(names, key=lambda n: (rows[n]["agreement"], logits_sqnr[n], rows[n]["top1"], -names.index(n)))
            chosen_reason = "best top-1 agreement with FP32, ties broken by logits SQNR"
        else:
            chosen_reason = "chosen with --chosen"

        # Histograms of the most interesting tensors with every calibrator's threshold.
        picked = pick_tensors(amaxes, order, count=histogram_tensors, sqnr=sqnr)
        if shared.stats is not None and all(t in shared.stats for t in picked):
            stats, hist_note = shared.stats, ""
            hist_images = max(o.samples for o in shared.outcomes.values() if not o.reused)
        else:
            stats, hist_images = tensor_histograms(prepared, data.calibration, picked, config.batch_size,
                                                   config.workers, histogram_samples,
                                                   "histograms" if config.progress else None)
            hist_note = f"recollected on {hist_images} calibration images (caches were reused)"
        figures = histogram_figures(stats, picked, amaxes, chosen)

        ev_fp32 = ev.predictions["fp32"]
        imagenet = config.dataset in ("imagenet-val", "demo")
        classes = class_changes(ev_fp32.labels, ev_fp32.top5[:, 0], ev.predictions[chosen].top5[:, 0], imagenet)
        flips = {"fixed": int(np.sum((ev_fp32.top5[:, 0] != ev_fp32.labels)
                                     & (ev.predictions[chosen].top5[:, 0] == ev_fp32.labels))),
                 "broken": int(np.sum((ev_fp32.top5[:, 0] == ev_fp32.labels)
                                      & (ev.predictions[chosen].top5[:, 0] != ev_fp32.labels)))}
        report = {
            "kind": "compare",
            "out": str(out),
            "model": model.name,
            "dataset": config.dataset if not config.data_dir else f"{config.dataset}:{config.data_dir}",
            "demo": data.demo,
            "backend": config.backend,
            "qdq_flavor": flavor,
            "bias_correction": {n: bool(bias_means(shared.outcomes[n].entry, config.bias_correction)) for n in names},
            "calibrators": names,
            "chosen": chosen,
            "chosen_reason": chosen_reason,
            "calibration": {"samples": max(o.samples for o in shared.outcomes.values()),
                            "shared_pass_seconds": round(shared.collect_seconds, 3),
                            "fresh": [n for n in names if not shared.outcomes[n].reused],
                            "reused": [n for n in names if shared.outcomes[n].reused],
                            "note": "Calibrators calibrated in this run share one pass over the images; "
                                    "their calibration seconds are that pass plus their own computation "
                                    "(for a reused cache: the seconds recorded when it was made)"},
            "eval": {"samples": len(ev.keys), "skipped": len(ev.skipped), "skipped_files": ev.skipped,
                     "disjoint_from_calibration": True},
            "fp32": fp32,
            "results": rows,
            "sqnr": {"images": len(sqnr_set), "tensors": order,
                     "what": "DequantizeLinear output of each quantized tensor vs the FP32 tensor; "
                             "simulated Q/DQ (ORT_ENABLE_BASIC)",
                     "db": {n: {t: finite_or_none(v) for t, v in sqnr[n].items()} for n in names}},
            "histograms": {"images": hist_images, "note": hist_note,
                           "tensors": [{"tensor": f["tensor"], "max_abs": f["max_abs"], "thresholds": f["thresholds"]}
                                       for f in figures]},
            "classes": classes,
            "flips": flips,
            "notes": list(data.notes),
            "seconds": None,
            "versions": _versions(),
            "model_sha256": model.sha256,
        }
        report["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(stage / "compare.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(stage / "compare.md", render_markdown(report))
        write_compare_html(stage, report, figures)
    return report


def _versions() -> dict:
    import onnxruntime

    from calib import __version__

    return {"calib": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def calibration_sentence(r: dict) -> str:
    c = r["calibration"]
    if not c["fresh"]:
        return ("Every cache was reused: no calibration pass in this run (the calibration seconds are "
                "those recorded when each cache was made).")
    return f"{c['note']}. Shared pass: {c['shared_pass_seconds']:.1f} s for {', '.join(c['fresh'])}."


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_markdown(r: dict) -> str:
    lines = [f"# calib compare: {r['model']} / {r['qdq_flavor']} Q/DQ", ""]
    if r.get("demo"):
        lines += ["> **Demo data**: 5 embedded photos; the figures say the pipeline works, not how accurate "
                  "INT8 is.", ""]
    lines += [f"FP32: top-1 {_pct(r['fp32']['top1'])}, top-5 {_pct(r['fp32']['top5'])} on "
              f"{r['eval']['samples']} evaluation images ({r['dataset']}, disjoint from the "
              f"{r['calibration']['samples']} calibration images).", "",
              "| calibrator | top-1 | top-5 | drop (pts) | agreement | logits SQNR (dB) | calibration (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for n in r["calibrators"]:
        x = r["results"][n]
        mark = " **(chosen)**" if n == r["chosen"] else ""
        sq = "∞" if x["logits_sqnr_db"] is None else f"{x['logits_sqnr_db']:.1f}"
        lines.append(f"| {n}{mark} | {_pct(x['top1'])} | {_pct(x['top5'])} | {100 * x['top1_drop']:.2f} | "
                     f"{_pct(x['agreement'])} | {sq} | {x['calibration_seconds']:.1f}"
                     f"{' (cache reused)' if x['reused'] else ''} |")
    lines += ["", f"- chosen: **{r['chosen']}** ({r['chosen_reason']})",
              f"- {calibration_sentence(r)}",
              f"- per-tensor SQNR on {r['sqnr']['images']} evaluation images: {r['sqnr']['what']}"]
    worst = sorted(((v, t) for t, v in r["sqnr"]["db"][r["chosen"]].items() if v is not None))[:5]
    if worst:
        lines.append("- lowest SQNR tensors (" + r["chosen"] + "): "
                     + ", ".join(f"`{t}` {v:.1f} dB" for v, t in worst))
    if r["classes"]:
        lines += ["", f"Classes whose top-1 accuracy changed most ({r['chosen']}; "
                      f"images FP32 got right and INT8 gets wrong: {r['flips']['broken']}, the other way: "
                      f"{r['flips']['fixed']}):", "",
                  "| class | images | FP32 | INT8 | change |", "|---|---:|---:|---:|---:|"]
        for c in r["classes"]:
            lines.append(f"| {c['class']} {c['name']} | {c['images']} | {_pct(c['fp32_top1'])} | "
                         f"{_pct(c['int8_top1'])} | {100 * c['change']:+.1f} pts |")
    for note in r.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", "Plots: `report.html`."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- calib run's html
def run_html_extras(prepared: onnx.ModelProto, qdq: onnx.ModelProto, outcome: CalibrationOutcome, flavor: str,
                    calibration: Dataset, evaluation: Dataset, calibrator: str, batch_size: int = 16,
                    workers: int | None = None, sqnr_images: int = 16, histogram_tensors: int = 6,
                    histogram_samples: int | None = 128, progress: bool = True) -> dict:
    """The figures of `calib run`'s report.html: histograms of a few tensors with the threshold,
    and per-tensor SQNR of the INT8 model on the first `sqnr_images` evaluation images."""
    amax = outcome.entry.cache.amax()
    order = [t for t in required_tensors(prepared, flavor) if t in amax]
    peaks = {}
    if outcome.entry.metadata:
        peaks = {t: max(-v.get("min", 0.0), v.get("max", 0.0)) for t, v in outcome.entry.metadata.tensors.items()}
    subset = evaluation.subset(evaluation.samples[:max(1, sqnr_images)])
    sq = activation_sqnr(prepared, {calibrator: qdq}, subset, order, min(batch_size, 4), workers,
                         "SQNR" if progress else None)[calibrator]
    logits = sq.pop(prepared.graph.output[0].name, math.inf)
    picked = pick_tensors({calibrator: amax}, order, peaks, histogram_tensors, {calibrator: sq})
    stats = getattr(outcome.calibrator, "stats", None)
    note = ""
    if stats is None or not stats.has_histogram or not all(t in stats for t in picked):
        stats, n = tensor_histograms(prepared, calibration, picked, batch_size, workers, histogram_samples,
                                     "histograms" if progress else None)
        why = "the cache was reused" if outcome.reused else f"{calibrator} keeps no histogram"
        note = f"recollected on {n} calibration images ({why})"
    figures = histogram_figures(stats, picked, {calibrator: amax}, calibrator)
    return {"histograms": figures, "histogram_note": note, "sqnr": {t: finite_or_none(v) for t, v in sq.items()}, "sqnr_tensors": order,
            "sqnr_images": len(subset), "logits_sqnr_db": finite_or_none(logits)}
