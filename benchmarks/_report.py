"""benchmarks/calibration.py's figures: raw child results -> summary, goals, RESULTS.md, console table."""

from __future__ import annotations

from _bench_util import GB, fmt_bytes, table

LIMITS_PLACEHOLDER = ("_To be filled in by the lead after profiling. This text sits between the `limits` "
                      "markers and is kept when the benchmark rewrites this file._")

TIME_LIMIT = 1.5        # calib calibration wall time / FP32 pass wall time
MEMORY_LIMIT = 1 * GB   # peak memory of one calibration
GROWTH_LIMIT = 1.1      # peak(all images) / peak(small)
AGREEMENT_MIN = 0.985
LOSS_MAX = 0.6          # top-1 points
SPEEDUP_MIN = 2.4       # ort flavor vs FP32, batch 32


def iter_children(raw: dict):
    yield from raw["fp32"]
    yield from raw["calib"].values()
    yield from raw["calib_small"].values()
    yield from raw["ort"].values()
    for f in raw["folds"]:
        yield f["calib"]
        yield from f["ort"].values()
        yield f["evaluate"]
    yield raw.get("speed", {})


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def _mem(r: dict) -> dict:
    m = r.get("memory", {})
    return {"main_peak": m.get("main_peak"), "tree_pss_peak": m.get("tree_pss_peak"),
            "tree_rss_peak": m.get("tree_rss_peak"), "children_peak": m.get("children_peak")}


def summarize(raw, calibrators, flavors, variants, speed_cal, batches) -> dict:
    fp32_runs = [r for r in raw["fp32"] if _ok(r)]
    ref = min(fp32_runs, key=lambda r: r["wall_s"]) if fp32_runs else None
    timing = {}
    for i, r in enumerate(raw["fp32"]):
        timing[f"fp32 pass #{i + 1}"] = {"kind": "fp32", "error": r.get("error"), "wall_s": r.get("wall_s"),
                                         "inner_s": r.get("pass_s"), "images": r.get("images"), **_mem(r)}
    for cal in calibrators:
        r, s = raw["calib"][cal], raw["calib_small"][cal]
        row = {"kind": "calib", "error": r.get("error"), "wall_s": r.get("wall_s"), "inner_s": r.get("collect_s"),
               "images": r.get("images"), **_mem(r)}
        if _ok(s):
            row.update(small_images=s["images"], small_main_peak=s["memory"]["main_peak"],
                       small_tree_pss_peak=s["memory"]["tree_pss_peak"], small_wall_s=s["wall_s"])
            if row["main_peak"]:
                row["growth"] = row["main_peak"] / s["memory"]["main_peak"]
        timing[f"calib {cal}"] = row
    for v, r in raw["ort"].items():
        timing[v] = {"kind": "ort", "error": r.get("error"), "wall_s": r.get("wall_s"), "images": r.get("images"),
                     "chunk_images": r.get("chunk_images"), "chunks": r.get("chunks"), **_mem(r)}
    for row in timing.values():
        if ref and row.get("wall_s"):
            row["vs_fp32"] = row["wall_s"] / ref["wall_s"]

    # accuracy: pool the folds; each model's FP32 figures come from the same images it was scored on
    pooled: dict = {}
    for f in raw["folds"]:
        ev = f["evaluate"]
        if not _ok(ev):
            continue
        fp = ev["counts"]["fp32"]
        for name, c in ev["counts"].items():
            p = pooled.setdefault(name, {"images": 0, "top1": 0, "top5": 0, "agree": 0, "fp32_top1": 0, "folds": 0})
            p["images"] += ev["images"]
            p["folds"] += 1
            p["fp32_top1"] += fp["top1"]
            for k in ("top1", "top5", "agree"):
                p[k] += c[k]
    accuracy = {}
    for name, p in pooled.items():
        n = p["images"]
        accuracy[name] = {"images": n, "folds": p["folds"], "top1": p["top1"] / n, "top5": p["top5"] / n,
                          "agreement": p["agree"] / n, "top1_loss_points": 100 * (p["fp32_top1"] - p["top1"]) / n}

    speed = raw.get("speed", {})
    throughput = {}
    if _ok(speed):
        t = speed["timings"]
        for name in speed["models"]:
            row = {}
            for b in batches:
                cur, base = t.get(f"{name}@{b}"), t.get(f"fp32@{b}")
                if cur:
                    row[f"b{b}"] = cur["throughput"]
                    row[f"b{b}_p50_ms"] = cur["latency_ms_p50"]
                    row[f"b{b}_vs_fp32"] = cur["throughput"] / base["throughput"] if base else None
            ops = speed["op_counts"].get(name, {})
            row["ops"] = {k: ops.get(k, 0) for k in ("QLinearConv", "Conv", "FusedConv", "QuantizeLinear",
                                                     "DequantizeLinear")}
            int8_activations = name.endswith("-tensorrt") or name.endswith("-s8")
            row["trt_valid"] = speed["trt_validity"].get(name, {}).get("valid") if int8_activations else None
            throughput[name] = row

    validity = {}
    for cal in calibrators:
        checks = [f["calib"]["trt_validity"][cal] for f in raw["folds"] if _ok(f["calib"])]
        if cal == speed_cal and _ok(speed):
            checks.append(speed["trt_validity"][f"calib-{cal}-tensorrt"])
        validity[cal] = {"models_checked": len(checks), "valid": bool(checks) and all(c["valid"] for c in checks),
                         "activation_quantize": [c["activation_quantize"] for c in checks],
                         "bad": sum(c["activation_bad"] + c["weight_bad"] for c in checks)}
    summary = {"fp32_reference": {"wall_s": ref["wall_s"], "pass_s": ref["pass_s"], "images": ref["images"],
                                  "batch": ref["batch"]} if ref else None,
               "timing": timing, "accuracy": accuracy, "throughput": throughput, "trt_validity": validity}
    summary["goals"] = goals(summary, calibrators, flavors, speed_cal)
    return summary


def _goal(goal, item, value, limit, ok, margin) -> dict:
    return {"goal": goal, "item": item, "value": value, "limit": limit, "margin": margin,
            "result": "PASS" if ok else "MISS"}


def goals(s: dict, calibrators, flavors, speed_cal) -> list[dict]:
    out = []
    none = lambda goal, item, limit: out.append(_goal(goal, item, "no data", limit, False, "-"))  # noqa: E731
    for cal in calibrators:
        r = s["timing"][f"calib {cal}"]
        g = "calibration time <= 1.5x FP32 pass"
        if r.get("vs_fp32") is None:
            none(g, cal, "1.5x")
        else:
            x = r["vs_fp32"]
            out.append(_goal(g, cal, f"{x:.2f}x ({r['wall_s']:.1f} s)", "1.5x", x <= TIME_LIMIT,
                             f"{abs(TIME_LIMIT - x):.2f}x {'to spare' if x <= TIME_LIMIT else 'over'}"))
    for cal in calibrators:
        r = s["timing"][f"calib {cal}"]
        g = "peak memory <= 1 GB (max of process peak and tree PSS)"
        if not r.get("main_peak"):
            none(g, cal, "1 GB")
        else:
            peak = max(r["main_peak"], r.get("tree_pss_peak") or 0)
            out.append(_goal(g, cal, fmt_bytes(peak), "1,000 MB", peak <= MEMORY_LIMIT,
                             f"{fmt_bytes(abs(MEMORY_LIMIT - peak))} {'to spare' if peak <= MEMORY_LIMIT else 'over'}"))
    for cal in calibrators:
        r = s["timing"][f"calib {cal}"]
        g = "peak RSS(all) <= 1.1x RSS(small)"
        if r.get("growth") is None:
            none(g, cal, "1.1x")
        else:
            x = r["growth"]
            out.append(_goal(g, cal, f"{x:.3f}x ({fmt_bytes(r['main_peak'])} / {fmt_bytes(r['small_main_peak'])})",
                             "1.1x", x <= GROWTH_LIMIT,
                             f"{abs(GROWTH_LIMIT - x):.3f}x {'to spare' if x <= GROWTH_LIMIT else 'over'}"))
    for cal in calibrators:
        for flavor in flavors:
            a = s["accuracy"].get(f"calib-{cal}-{flavor}")
            item = f"{cal} / {flavor}"
            if a is None:
                none("top-1 agreement >= 98.5%", item, "98.5%")
                none("top-1 loss <= 0.6 points", item, "0.6")
                continue
            ag, loss = 100 * a["agreement"], a["top1_loss_points"]
            out.append(_goal("top-1 agreement >= 98.5%", item, f"{ag:.1f}%", "98.5%", a["agreement"] >= AGREEMENT_MIN,
                             f"{abs(ag - 100 * AGREEMENT_MIN):.1f} points {'to spare' if ag >= 98.5 else 'short'}"))
            out.append(_goal("top-1 loss <= 0.6 points", item, f"{loss:+.1f} points", "0.6", loss <= LOSS_MAX,
                             f"{abs(LOSS_MAX - loss):.1f} points {'to spare' if loss <= LOSS_MAX else 'over'}"))
    t = s["throughput"].get(f"calib-{speed_cal}-ort", {})
    g = "ort flavor >= 2.4x FP32 throughput at batch 32"
    if t.get("b32_vs_fp32") is None:
        none(g, speed_cal, "2.4x")
    else:
        x = t["b32_vs_fp32"]
        out.append(_goal(g, speed_cal, f"{x:.2f}x ({t['b32']:.0f} img/s)", "2.4x", x >= SPEEDUP_MIN,
                         f"{abs(x - SPEEDUP_MIN):.2f}x {'to spare' if x >= SPEEDUP_MIN else 'short'}"))
    for cal in calibrators:
        v = s["trt_validity"][cal]
        out.append(_goal("tensorrt flavor TensorRT-valid (int8, zero point 0)", cal,
                         f"{v['models_checked']} models, {v['bad']} bad Q/DQ", "0 bad", v["valid"],
                         "-" if v["valid"] else f"{v['bad']} offending nodes"))
    return out


# ------------------------------------------------------------------------------------ output
def _f(x, spec=".1f", unit="") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(res: dict) -> str:
    m, c = res["machine"], res["config"]
    v = m["versions"]
    ref = res["fp32_reference"]
    lines = ["# Calibration benchmark: calib vs ONNX Runtime's quantize_static", ""]
    if c["quick"]:
        lines += ["**QUICK SMOKE RUN (`--quick`): few images, short timings. Not a benchmark result.**", ""]
    lines += [f"- Date: {m['date']}; total {res['total_s']:.0f} s",
              f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} cores), "
              f"{m['ram_gb']} GB RAM, {m['os']}; load average at start {tuple(round(x, 2) for x in m['load_avg_at_start'])}",
              f"- Versions: Python {m['python']}, calib {v['calib']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, "
              f"numpy {v['numpy']}, torch {v['torch']}",
              f"- Model {c['model']}; images: {c['count']} of `{c['images']}` (seed {c['seed']})",
              f"- Command: `python benchmarks/calibration.py --images {c['images']}"
              f"{' --quick' if c['quick'] else ''}{'' if c['bias_correction'] else ' --no-bias-correction'}`", "",
              "## Method", "",
              "- Every measured item runs in its own child process; memory is that child's: the process's "
              "kernel high-water mark (`ru_maxrss`) and the peak sum over the process and its decoding workers, "
              "sampled every 0.1 s, as PSS (shared pages split) and as RSS (shared pages counted per process).",
              f"- FP32 pass: ONNX Runtime session load + one pass over the {c['count']} images at batch "
              f"{c['fp32_batch']}, decoding included (calib's decoding pool); run before and after calib's timed "
              "calibrations, the faster run is the reference.",
              "- calib: `calib.calibration.calibrate` as `calib calibrate` runs it (temporary cache store, "
              "recalibrate, default batch size 4 and workers); wall time of the call (collection, ranges, cache "
              f"write). Run on all {c['count']} images and on {c['small']} for the memory growth check.",
              "- ONNX Runtime: `quantize_static(QDQ, per_channel=True, weights QInt8)`; `-s8` = int8 symmetric "
              "activations (`ActivationSymmetric`, `CalibTensorRangeSymmetric`: TensorRT-like, compare with calib's "
              "tensorrt flavor), `-u8` = ORT's default uint8 asymmetric activations (compare with calib's ort "
              f"flavor). Data fed in chunks of about {c['ort_chunk']} images through `CalibStridedMinMax` (see below). "
              "Wall time covers calibration and writing the Q/DQ model.",
              f"- Accuracy on unseen images by 2-fold cross-validation: the {c['count']} images are split (seed "
              f"{c['seed']}) into halves A and B; calibrate on A and evaluate on B, then calibrate on B and evaluate "
              f"on A; the figures pool both folds ({c['count']} unseen evaluations per method). Per fold, calib's "
              "four calibrators share one statistics pass (with the channel means bias correction uses, as "
              "`calibrate` collects them); each one's scales go through the TensorRT cache text and are read back "
              "(scale = float32(amax/127)), then become both Q/DQ flavors"
              f"{', bias-corrected (the default)' if c['bias_correction'] else ', WITHOUT bias correction'}. "
              "Agreement = same top-1 "
              "as FP32 on the same image. Models with int8 activations (the tensorrt flavor, ORT's -s8) are "
              "evaluated as calib evaluates them, as their integer-exact graph (docs/quantization.md); the others as "
              "written. Calibration time and memory come from the separate all-image runs above.",
              f"- Throughput: `time_runner` on random input, ONNX Runtime CPU, all cores, {c['bench_rounds']} "
              f"interleaved rounds of {c['bench_seconds']} s per model and batch size, best round kept, every model "
              "as written (what ONNX Runtime deploys). calib models "
              "from the entropy cache of the timed all-image calibration; ORT models from its all-image runs.", ""]

    lines += ["## Goals", "", table(["Goal", "Item", "Value", "Limit", "Margin", "Result"],
                                    [[g["goal"], g["item"], g["value"], g["limit"], g["margin"], f"**{g['result']}**"]
                                     for g in res["goals"]]), ""]
    passed = sum(g["result"] == "PASS" for g in res["goals"])
    lines += [f"{passed} of {len(res['goals'])} goals pass.", ""]

    rows = []
    for name, r in res["timing"].items():
        if r.get("error"):
            rows.append([name, "FAILED: " + r["error"][:80]] + [""] * 8)
            continue
        rows.append([name, r.get("images"), _f(r.get("wall_s")), _f(r.get("vs_fp32"), ".2f", "x"),
                     _f(r.get("inner_s")), fmt_bytes(r.get("main_peak")), fmt_bytes(r.get("tree_pss_peak")),
                     fmt_bytes(r.get("tree_rss_peak")),
                     fmt_bytes(r.get("small_main_peak")) if r["kind"] == "calib" else "",
                     _f(r.get("growth"), ".3f", "x") if r["kind"] == "calib" else ""])
    lines += ["## Calibration time and memory", "",
              f"Reference: FP32 pass {_f(ref and ref['wall_s'])} s ({_f(ref and ref['pass_s'])} s without session load). "
              "'Inner s' is the FP32 loop without session load, or calib's own collection time (what it reports).", "",
              table(["Method", "Images", "Wall s", "vs FP32", "Inner s", "Peak RSS (process)", "Peak PSS (tree)",
                     "Peak RSS (tree)", f"Peak RSS ({c['small']} img)", "Growth"], rows), ""]

    acc = res["accuracy"]
    fp = acc.get("fp32")
    rows = []
    for name, a in acc.items():
        if name == "fp32":
            continue
        method, flavor = (name.rsplit("-", 1) if name.startswith("calib-") else
                          (name, "tensorrt-like (int8 sym)" if name.endswith("s8") else "ort-like (uint8 asym)"))
        rows.append([method, flavor, _pct(a["top1"]), _pct(a["top5"]), f"{a['top1_loss_points']:+.1f}",
                     _pct(a["agreement"]), a["images"]])
    lines += ["## Accuracy on unseen images (2-fold cross-validation, pooled)", ""]
    if fp:
        lines += [f"FP32: top-1 {_pct(fp['top1'])}, top-5 {_pct(fp['top5'])} on {fp['images']} images.", ""]
    lines += [table(["Method", "Q/DQ flavor", "Top-1", "Top-5", "Top-1 loss (points)", "Agreement with FP32",
                     "Images"], rows), ""]

    rows = []
    for name, t in res["throughput"].items():
        o = t["ops"]
        rows.append([name, _f(t.get("b1"), ".0f"), _f(t.get("b1_vs_fp32"), ".2f", "x"), _f(t.get("b1_p50_ms"), ".1f"),
                     _f(t.get("b32"), ".0f"), _f(t.get("b32_vs_fp32"), ".2f", "x"),
                     f"{o['QLinearConv']} / {o['Conv'] + o['FusedConv']}",
                     {True: "yes", False: "NO"}.get(t["trt_valid"], "n/a (fp32/uint8)")])
    lines += ["## Throughput (ONNX Runtime CPU, images/s)", "",
              "QLinearConv / float Conv: integer and float (Conv, FusedConv) convolutions in the graph ONNX Runtime "
              "actually runs, after its fusions. TensorRT-valid: int8 activations with zero point 0 (checked on the "
              "int8-activation models only).", "",
              table(["Model", "Batch 1", "vs FP32", "p50 ms", "Batch 32", "vs FP32", "QLinearConv / float Conv",
                     "TensorRT-valid"], rows), ""]

    ort_rows = [[v, r.get("chunk_images"), r.get("chunks"), ", ".join(f"{k}={x}" for k, x in r.get("extra_options", {}).items())]
                for v, r in res["raw"]["ort"].items() if "error" not in r]
    lines += ["## How ONNX Runtime's calibrators were fed", "",
              "ONNX Runtime's Entropy and Percentile calibrators (`HistogramCalibrater.collect_data`) keep every "
              "activation of every float tensor for all the data they are given before building histograms, so "
              "500 images at once need over 20 GB. `quantize_static` supports chunking through the extra option "
              "`CalibStridedMinMax=k` (despite the name it applies to every method): it calls the reader's "
              "`set_range(start, start + k)` and `collect_data` once per chunk, and the histogram collector merges "
              "chunks. The reader needs `__len__` and `set_range`; all batches in a chunk must have one shape, and "
              "the length must be a multiple of k, so the reader's batch and k are chosen to divide the image count. "
              "`CalibMaxIntermediateOutputs` is not used: the histogram calibrators ignore it, and ONNX Runtime's "
              "MinMax calibrator discards (does not merge) the outputs it has collected when it reaches that count.",
              "", table(["Variant", "Images per chunk", "Chunks", "extra_options"], ort_rows), "",
              "## What limits it", "", "{{LIMITS}}", ""]
    return "\n".join(lines)


def console(res: dict) -> str:
    lines = ["", "calibration (all images)      wall s   vs FP32   peak RSS    PSS tree"]
    for name, r in res["timing"].items():
        if r.get("error"):
            lines.append(f"  {name:<27} FAILED")
        else:
            lines.append(f"  {name:<27} {_f(r.get('wall_s')):>7}   {_f(r.get('vs_fp32'), '.2f', 'x'):>7}"
                         f"   {fmt_bytes(r.get('main_peak')):>9}   {fmt_bytes(r.get('tree_pss_peak')):>9}")
    lines.append("\nunseen images (pooled folds)  top-1    loss   agree")
    for name, a in res["accuracy"].items():
        lines.append(f"  {name:<27} {_pct(a['top1']):>6}  {a['top1_loss_points']:+5.1f}  {_pct(a['agreement']):>6}")
    lines.append("\nthroughput img/s              b1     b32   b32 vs FP32")
    for name, t in res["throughput"].items():
        lines.append(f"  {name:<27} {_f(t.get('b1'), '.0f'):>5}  {_f(t.get('b32'), '.0f'):>5}   "
                     f"{_f(t.get('b32_vs_fp32'), '.2f', 'x'):>6}")
    lines.append("\ngoals")
    for g in res["goals"]:
        lines.append(f"  {g['result']}  {g['goal']} [{g['item']}]: {g['value']} ({g['margin']})")
    return "\n".join(lines)
