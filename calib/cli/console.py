"""What the commands print on the terminal: short summaries and tables, from a report's JSON
form or a command's rows. Kept out of the command definitions so those stay thin."""

from __future__ import annotations

import json
import os

import typer

from calib.commands.words import change, images, points

DEMO_LINE = "DEMO run on 5 embedded photos: see datasets/imagenet-val.md to run on ImageNet."


def notes(lines, prefix: str = "note") -> None:
    """One line on stderr per note or warning ("note: ...", "warning: ..."), each once."""
    for line in dict.fromkeys(lines):
        typer.echo(f"{prefix}: {line}", err=True)


def report_warnings(r: dict) -> None:
    """The report's warnings (overlap, fewer calibration images than asked, unlabelled images,
    FP32 at chance level...) on stderr at the end of the command: a reader of the terminal alone
    must see them too, not only a reader of report.md."""
    notes(r.get("warnings") or [], "warning")


def as_json(data) -> None:
    typer.echo(json.dumps(data, indent=1))


def run_summary(r: dict, html: bool) -> None:
    if r["demo"]:
        typer.echo(DEMO_LINE)
    if "metric" in r:   # judged by its task's metric and its outputs (any task, or a model without labels)
        m = r["metric"]
        ci = m.get("drop_ci95")
        worst = min((o["sqnr_db"] for o in r["outputs"] if o["sqnr_db"] is not None), default=None)
        typer.echo(f"{m['name']}: FP32 {m['fp32']:.4f}  INT8 {m['int8']:.4f}  drop {m['drop']:.4f}"
                   + (f" (95% CI {ci[0]:.4f} to {ci[1]:.4f})" if ci else "")
                   + f" against {'the labels' if m['reference'] == 'labels' else 'FP32'}; worst output SQNR "
                   + ("inf" if worst is None else f"{worst:.1f} dB") + f"  ({images(r['eval']['samples'])})")
        v = r.get("verdict")
        if v:
            typer.echo(f"verdict: {v['headline']}: {v['reason']}")
        typer.echo(f"report: {os.path.dirname(r['int8_model'])}/report.md" + (" and report.html" if html else ""))
        report_warnings(r)
        return
    ci = r.get("top1_drop_ci95")
    typer.echo(f"FP32 top-1 {r['fp32']['top1']:.2%}  INT8 top-1 {r['int8']['top1']:.2%}  "
               f"drop {points(r['top1_drop'])} pts" + (f" (95% CI {points(ci[0])} to {points(ci[1])})" if ci else "")
               + f"  agreement {r['agreement']:.2%}  ({images(r['eval']['samples'])})")
    v = r.get("verdict")
    if v:
        typer.echo(f"verdict: {v['headline']}: {v['reason']}")
    fb = r.get("fallback")
    if fb:
        f = fb["final"]
        cost = f", INT8 throughput {change(fb['throughput']['cost'])}" if fb.get("throughput") else ""
        typer.echo(f"fallback: {len(fb['float_layers'])} of {fb['layers']} layers left in float; held-out "
                   f"{images(f['images'])}: drop {points(f['drop'])} pts, agreement {f['agreement']:.2%} "
                   f"(budget {'met' if fb['final_met'] else 'NOT met'}){cost}")
    out_dir = os.path.dirname(r["int8_model"])
    typer.echo(f"report: {os.path.join(out_dir, 'report.md')}" + (" and report.html" if html else ""))
    report_warnings(r)


def compare_summary(r: dict) -> None:
    if r["demo"]:
        typer.echo(DEMO_LINE)
    typer.echo(f"FP32 top-1 {r['fp32']['top1']:.2%} ({images(r['eval']['samples'])})")
    order = [row["name"] for row in r.get("ranking") or []] or r["calibrators"]
    for name in order:  # best logits SQNR first
        x = r["results"][name]
        sq = x.get("eval_logits_sqnr_db", x["logits_sqnr_db"])
        typer.echo(f"{name:12} logits SQNR {'inf' if sq is None else f'{sq:.1f}'} dB  top-1 {x['top1']:.2%}  "
                   f"drop {points(x['top1_drop'])} pts  agreement {x['agreement']:.2%}"
                   f"{'  <- chosen' if name == r['chosen'] else ''}")
    typer.echo(f"report: {os.path.join(r['out'], 'report.html')}")
    report_warnings(r)


def sensitivity_summary(d: dict, top: int = 10) -> None:
    task = "task" in d["sensitivity"]   # ranked by its lowest output SQNR: no agreement to print
    for i, r in enumerate(d["sensitivity"]["rows"][:top], 1):
        value = r["sqnr_db"] if task else r["logits_sqnr_db"]
        sq = "inf" if value is None else f"{value:.1f}"
        beside = f"output {r['worst_output']}" if task else f"agreement {r['agreement']:.2%}"
        typer.echo(f"{i:3}. {sq:>6} dB  {beside}  {r['layer']}")
    typer.echo(f"report: {os.path.join(d['out'], 'report.html')}")
    report_warnings(d)


def bench_table(rows: list[dict]) -> None:
    first = rows[0]
    typer.echo(f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9}   "
               f"{os.path.basename(first['model'])} on {first['backend']} ({first['precision']})")
    for r in rows:
        typer.echo(f"{r['batch_size']:>5} {r['latency_ms_p50']:9.2f} {r['latency_ms_p90']:9.2f} "
                   f"{r['latency_ms_p99']:9.2f} {r['throughput']:9.1f}")


def cache_list_table(rows: list[dict], cache_dir: str) -> None:
    if not rows:
        typer.echo(f"no caches in {cache_dir}")
        return
    typer.echo(f"{'file':60} {'model':20} {'dataset':14} {'calibrator':11} {'samples':>7} {'created':20} status")
    for r in rows:
        status = "ok" if r.get("valid", True) else f"INVALID: {r.get('problem') or 'see calib cache show'}"
        typer.echo(f"{str(r['file']):60} {str(r['model'])[:20]:20} {str(r['dataset'])[:14]:14} "
                   f"{str(r['calibrator'])[:11]:11} {str(r['samples']):>7} {str(r['created'])[:20]:20} {status}")


def cache_show(entry, rows: list[dict]) -> None:
    typer.echo(f"{entry.path}\nheader: {entry.cache.header}")
    if entry.metadata:
        m = entry.metadata
        typer.echo(f"model: {m.model_name} sha256 {m.key.model_sha256}\ndataset: {m.key.dataset_id} "
                   f"({m.dataset_description}), {m.samples} samples, list sha256 {m.key.dataset_fingerprint[:16]}\n"
                   f"calibrator: {m.key.calibrator} {m.key.calibrator_params}; batch {m.batch_size}; "
                   f"created {m.created}; calib {m.calib_version}; TensorRT {m.trt_version}")
    else:
        typer.echo("no metadata sidecar (import it with: calib cache import FILE --model M)")
    typer.echo(f"{'scale':>12} {'amax':>10} {'observed':>10}  tensor")
    for r in rows:
        obs = f"{r['observed_max']:10.4g}" if r["observed_max"] else f"{'':10}"
        flags = ("  <- " + ", ".join(r["flags"])) if r["flags"] else ""
        typer.echo(f"{r['scale']:12.6g} {r['amax']:10.4g} {obs}  {r['tensor']}{flags}")


def cache_diff_table(d: dict, a: str, b: str, top: int) -> None:
    typer.echo(f"{'ratio b/a':>10} {'scale a':>12} {'scale b':>12}  tensor")
    for r in d["rows"][:top]:
        typer.echo(f"{r['ratio']:10.4f} {r['a']:12.6g} {r['b']:12.6g}  {r['tensor']}")
    if d["only_a"] or d["only_b"]:
        typer.echo(f"only in {a}: {len(d['only_a'])} tensors; only in {b}: {len(d['only_b'])} tensors")


def build_summary(result) -> None:
    """What `calib build` says: the cache's problems and the tensors left in float on stderr, the
    GPU the model was run on, the Q/DQ model an engine was built from, then the path of what was
    built."""
    notes(result.validation.problems(), "warning")
    for name in result.left_in_float:
        typer.echo(f"left in float (no scale): {name}", err=True)
    if result.device != "cpu":
        typer.echo(f"runs in ONNX Runtime's CUDA provider on {result.device}", err=True)
    if getattr(result, "qdq_model", None):
        typer.echo(f"built from the Q/DQ model kept beside it: {result.qdq_model}", err=True)
    typer.echo(str(result.path))


def import_summary(result) -> None:
    if result.missing:
        typer.echo(f"warning: imported with --force: {len(result.missing)} quantized tensor(s) have no scale and "
                   f"stay float in builds: {', '.join(result.missing[:5])}" + (" …" if len(result.missing) > 5 else ""),
                   err=True)
    typer.echo(str(result.path))
