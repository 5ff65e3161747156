"""`calib compare`: several calibrators on the same model and data, side by side.

    calibrate each (reusing caches; the missing ones share ONE pass over the calibration images:
    one TensorStatistics serves every calibrator) -> build each INT8 model from its cache as read
    back -> evaluate FP32 and every INT8 model on the same images (one decode per batch) ->
    per-tensor SQNR against FP32 on a few evaluation images -> compare.json, compare.md,
    report.html (self-contained), int8-<calibrator>.onnx.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from calib.backends import get_backend
from calib.calibration import calibrate_many
from calib.calibrators import calibrator_class
from calib.diagnostics.histograms import pick_tensors, tensor_histograms
from calib.diagnostics.sqnr import activation_sqnr
from calib.errors import CalibError
from calib.stats.classes import class_changes
from calib.evaluate.models import evaluate_models
from calib.models import prepared_path, save_model
from calib.stats.paired import ONE_IMAGE_INTERVAL, rank_calibrators
from calib.stats.sqnr import finite_or_none
from calib.quantize import quantize_model, required_tensors
from calib.report.compare import write_compare_report
from calib.report.plots import histogram_figures
from calib.report.schema import CompareReport, SharedCalibrationSection
from calib.fsutil import mark_calib_onnx, staged_dir
from calib.report.header import chance_warning, eval_section
from calib.session.config import RunConfig
from calib.data.classes import class_count, class_names_of
from calib.session.context import report_header, setup

DEFAULT_CALIBRATORS = ("entropy", "minmax", "percentile", "mse")
def compare_calibrators(config: RunConfig, calibrators: list[str] | tuple[str, ...] = DEFAULT_CALIBRATORS,
                        out: Path | None = None, chosen: str | None = None, sqnr_images: int = 16,
                        histogram_tensors: int = 6, histogram_samples: int | None = None) -> CompareReport:
    """Compare `calibrators` on `config`'s model and data (the options of `calib run`; its
    `calibrator` field is ignored). Writes into `out` (staged); returns the report.

    `chosen`: the calibrator the detailed sections show (default: the highest logits SQNR).
    `sqnr_images`: evaluation images for the per-tensor SQNR. `histogram_samples`: when every
    cache was reused, recollect the plotted tensors' histograms on this many calibration
    images (None: all of them).
    """
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
    runnable, why = backend.can_run()
    if not runnable:  # evaluation runs the engines: say so before any calibration work
        raise CalibError(f"--backend {config.backend} cannot run engines here: {why}")
    s = setup(config, out, "compare", names)
    model, flavor, data, prepared, out = s.model, s.flavor, s.data, s.prepared, s.out
    started = time.perf_counter()
    placement = s.placement
    calib_batch, eval_batch = config.pass_batch_sizes()
    with staged_dir(out) as stage:
        shared = calibrate_many(model, prepared, data.calibration, names, config.cache_store(),
                                config.calibrator_params, calib_batch, config.workers,
                                config.recalibrate, config.progress, placement=placement, gpu_decode=config.gpu_decode)
        amaxes = {n: shared.outcomes[n].entry.cache.amax() for n in names}
        qdq = {}
        onnx_models = {"fp32": prepared_path(model)}
        for n in names:
            qdq[n], _ = quantize_model(prepared, amaxes[n], flavor, **config.placement_rules(),
                                       channel_means=shared.outcomes[n].entry.channel_means(config.bias_correction))
            mark_calib_onnx(qdq[n], qdq_flavor=flavor, cache=shared.outcomes[n].entry.path.name)
            onnx_models[n] = stage / f"int8-{n}.onnx"
            save_model(qdq[n], onnx_models[n])
        ev, artifacts = evaluate_models(backend, onnx_models, data.evaluation, stage, eval_batch,
                                        config.workers, config.progress, stems={n: f"int8-{n}" for n in names},
                                        placement=placement, gpu_decode=config.gpu_decode)
        fp32 = ev.summary("fp32")
        rows = {}
        for n in names:
            o = shared.outcomes[n]
            summary = ev.summary(n)
            rows[n] = {"top1": summary["top1"], "top5": summary["top5"], "top1_drop": fp32["top1"] - summary["top1"],
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
                               "SQNR" if config.progress else None, placement.first, config.gpu_decode)
        logits_name = prepared.graph.output[0].name
        logits_sqnr = {n: sqnr[n].pop(logits_name, math.inf) for n in names}
        for n in names:
            rows[n]["logits_sqnr_db"] = finite_or_none(logits_sqnr[n])
        # Rank on every evaluation image: logits SQNR (a far steadier signal than top-1 on a few
        # hundred images) with bootstrap intervals, agreement with exact intervals, and which
        # differences are significant (calib.stats.paired.rank_calibrators).
        ev_fp32 = ev.predictions["fp32"]
        tops = {n: ev.predictions[n].top5[:, 0] for n in names}
        noise = {n: ev.noise[n] for n in names} if ev.signal is not None else None  # None: rank by agreement
        ranking = rank_calibrators(ev_fp32.labels, ev_fp32.top5[:, 0], tops, ev.signal, noise, seed=config.seed)
        for row in ranking:
            rows[row["name"]].update({"agreement_ci95": row["agreement_ci95"], "top1_drop_ci95": row["top1_drop_ci95"],
                                      "eval_logits_sqnr_db": row["logits_sqnr_db"],
                                      "eval_logits_sqnr_db_ci95": row["logits_sqnr_db_ci95"]})
        if chosen is None:
            chosen = ranking[0]["name"]
            chosen_reason = "highest logits SQNR against FP32 on the evaluation images"
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
                                                   "histograms" if config.progress else None, placement.first,
                                                   config.gpu_decode)
            hist_note = f"recollected on {hist_images} calibration images (caches were reused)"
        figures = histogram_figures(stats, picked, amaxes, chosen)

        changes = class_changes(ev_fp32.labels, ev_fp32.top5[:, 0], tops[chosen],
                                names=class_names_of(data.evaluation)).to_json()
        changed = {"fixed": changes["images_fixed"], "broken": changes["images_broken"]}
        header = report_header(config, s, placement, {n: onnx_models[n] for n in names})
        chance = chance_warning(fp32["top1"], len(ev.keys), class_count(data.evaluation))
        if chance:
            header.warn(chance)
        if noise is not None and len(ev.signal) < 2:  # the ranking's SQNR intervals are null: say why
            header.notes.append(f"logits SQNR: {ONE_IMAGE_INTERVAL}")
        report = CompareReport(
            header=header, kind="compare", out=str(out),
            bias_correction={n: bool(shared.outcomes[n].entry.channel_means(config.bias_correction)) for n in names},
            calibrators=names, chosen=chosen, chosen_reason=chosen_reason,
            calibration=SharedCalibrationSection(
                samples=max(o.samples for o in shared.outcomes.values()),
                shared_pass_seconds=round(shared.collect_seconds, 3),
                fresh=[n for n in names if not shared.outcomes[n].reused],
                reused=[n for n in names if shared.outcomes[n].reused],
                note="Calibrators calibrated in this run share one pass over the images; their calibration seconds "
                     "are that pass plus their own computation (for a reused cache: the seconds recorded when it "
                     "was made)"),
            eval=eval_section(ev, data.calibration, data.evaluation, header),
            fp32=fp32, results=rows,
            sqnr={"images": len(sqnr_set), "tensors": order,
                  "what": "DequantizeLinear output of each quantized tensor vs the FP32 tensor; "
                          "simulated Q/DQ (ORT_ENABLE_BASIC)",
                  "db": {n: {t: finite_or_none(v) for t, v in sqnr[n].items()} for n in names}},
            histograms={"images": hist_images, "note": hist_note,
                        "tensors": [{"tensor": f["tensor"], "max_abs": f["max_abs"], "thresholds": f["thresholds"]}
                                    for f in figures]},
            classes=changes.pop("per_class"), flips=changed, class_summary=changes, ranking=ranking)
        report.seconds = round(time.perf_counter() - started, 1)
        write_compare_report(stage, report, figures)
    return report
