"""GPU benchmark of one code change against the code before it, measured in one run on one machine.

    python benchmarks/gpu_pass.py --images DIR --fp32 M.onnx --int8 M-int8.onnx --before TREE --out F.json

`TREE` holds the calib package of the code before the change (e.g. `git archive <commit> calib`);
this checkout is the code after it. Each measurement runs in a fresh process per code version, the
two versions alternating (before, after, before, after, ...), so drift of the machine falls on
both alike:

- FP32+INT8 evaluation end to end (decode included) over the sample folder repeated to
  `--repeat-to` images, with the Pillow-worker decoder (`--gpu-decode pil`) and with nvJPEG;
- the 500-image calibration pass (the statistics and channel means `calib calibrate` collects),
  nvJPEG decode, seconds after the model is loaded: a first pass, then a warm one (reported);
- whether the two versions give the same predictions and the same statistics, bit for bit.

Written for issue 20 (the pass layer): the targets were within 3% of the code before on the
first figure, and under 2 s on the second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process, with the calib found first on sys.path."""
    import hashlib

    import numpy as np
    import onnx
    import torch

    from calib.backends.ort import OrtRunner
    from calib.calibration import calibrated_tensors, weighted_inputs
    from calib.calibrators.channel_means import ChannelMeans, Observers
    from calib.calibrators.statistics import TensorStatistics
    from calib.data.dataset import Dataset
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset

    before = args.version == "before"
    pre = get_preset("efficientnet-lite")
    sample = Dataset.of(imagenet_val(args.images), pre)
    out: dict = {"calib": str(Path(sys.modules["calib"].__file__).parent)}
    if args.what == "evaluate":
        repeats = max(1, -(-args.repeat_to // len(sample)))
        big = sample.subset((sample.samples * repeats)[:args.repeat_to])
        runners = {"fp32": OrtRunner(args.fp32, device="cuda:0"), "int8": OrtRunner(args.int8, device="cuda:0")}
        warm = torch.zeros((args.batch, 3, pre.size, pre.size), device="cuda:0")
        for r in runners.values():   # the one batch shape, as a warm run of the command would have
            (r.run_device(warm) if before else r.infer(warm))
        torch.cuda.synchronize()
        t = time.perf_counter()
        if before:
            from calib.distributed import evaluate_device

            ev = evaluate_device(runners, big, args.batch, "cuda:0", args.decoder).evaluation
        else:
            from calib.passes import evaluate

            ev, _ = evaluate(runners, big, args.batch, "cuda:0", args.decoder, None, None)
        seconds = time.perf_counter() - t
        top5 = np.concatenate([ev.predictions[n].top5 for n in ("fp32", "int8")])
        out.update(images=len(ev.keys), seconds=seconds, images_per_s=len(ev.keys) / seconds,
                   predictions_sha256=hashlib.sha256(top5.tobytes()).hexdigest(),
                   agreement=ev.agreement(), fp32_top1=ev.summary("fp32")["top1"])
    else:
        prepared = onnx.load(str(args.fp32))
        tensors, wi = calibrated_tensors(prepared), weighted_inputs(prepared)
        if before:
            from calib.collect_gpu import collect_gpu, exposed_with_shapes

            exposed, _ = exposed_with_shapes(prepared, tensors)
            runner = OrtRunner(exposed.SerializeToString(), device="cuda:0")
        else:
            from calib.passes import exposed_runner, observe_pass

            runner = exposed_runner(prepared, tensors, "cuda:0")
        first = None
        for _ in range(2):   # the first pass pays for kernel compiles and cuDNN set-up; the second is warm
            stats, means = TensorStatistics(), ChannelMeans(wi)
            if before:
                r = collect_gpu(prepared, sample, Observers(stats, means), args.calib_batch, "cuda:0", tensors, None,
                                args.decoder, runner=runner)
            else:
                r = observe_pass(prepared, sample, Observers(stats, means), args.calib_batch, "cuda:0", tensors, None,
                                 None, args.decoder, runner=runner)
            first = r.seconds if first is None else first
        out["first_pass_seconds"] = first
        state = stats.state_dict()["tensors"]
        digest = hashlib.sha256()
        for name in sorted(state):
            e = state[name]
            digest.update(repr((name, e["min"], e["max"], e["count"], e["exp"])).encode())
            digest.update(np.asarray(e["counts"]).tobytes() if e["counts"] is not None else b"")
        for name in sorted(means.sums):
            digest.update(name.encode() + means.sums[name].tobytes())
        out.update(images=r.images, seconds=r.seconds, statistics_sha256=digest.hexdigest())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--int8", type=Path, required=True)
    p.add_argument("--before", type=Path, required=True, help="folder holding the calib package before the change")
    p.add_argument("--repeat-to", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--calib-batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", nargs="*", help="measurements to run, e.g. calibrate[nvjpeg] (default: all)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--child", nargs=3, metavar=("VERSION", "WHAT", "DECODER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.version, args.what, args.decoder = args.child
        sys.path.insert(0, str(args.before if args.version == "before" else ROOT))
        print(json.dumps(child(args)))
        return
    import torch

    results: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpu": torch.cuda.get_device_name(0),
                     "cpus": os.cpu_count(), "torch": torch.__version__, "repeat_to": args.repeat_to,
                     "batch": args.batch, "calib_batch": args.calib_batch, "runs": []}
    plan = [("evaluate", "pil"), ("evaluate", "nvjpeg"), ("calibrate", "nvjpeg")]
    if args.only:
        plan = [(w, d) for w, d in plan if f"{w}[{d}]" in args.only]
    for round_ in range(args.rounds):
        for what, decoder in plan:
            for version in ("before", "after"):
                cmd = [sys.executable, __file__, "--images", str(args.images), "--fp32", str(args.fp32), "--int8",
                       str(args.int8), "--before", str(args.before), "--repeat-to", str(args.repeat_to), "--batch",
                       str(args.batch), "--calib-batch", str(args.calib_batch), "--out", str(args.out),
                       "--child", version, what, decoder]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                row = {"round": round_, "version": version, "what": what, "decoder": decoder}
                if proc.returncode:
                    row["error"] = proc.stderr.strip().splitlines()[-1:] or ["exit %d" % proc.returncode]
                else:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    results["summary"] = summary(results["runs"])
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


def summary(runs: list[dict]) -> dict:
    """Per measurement: the best of each version, after/before, and whether their results agree."""
    out = {}
    for what, decoder, key, better in (("evaluate", "pil", "images_per_s", max), ("evaluate", "nvjpeg", "images_per_s", max),
                                       ("calibrate", "nvjpeg", "seconds", min)):
        rows = [r for r in runs if r["what"] == what and r["decoder"] == decoder and "error" not in r]
        best = {v: better([r[key] for r in rows if r["version"] == v], default=None) for v in ("before", "after")}
        digest = "predictions_sha256" if what == "evaluate" else "statistics_sha256"
        same = len({r[digest] for r in rows}) == 1 if rows else None
        out[f"{what}[{decoder}]"] = {key: best, "after/before": (best["after"] / best["before"]
                                     if best["after"] and best["before"] else None), "identical_results": same}
    return out


if __name__ == "__main__":
    main()
