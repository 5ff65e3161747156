"""Images/s into GPU memory through GpuBatchStream vs the decode ceiling.

The decode ceiling is `iter_batches` alone with the same worker count, consuming nothing: the
rate at which decoded, preprocessed batches reach this process. The stream adds the pinned
copy and the host-to-device copy on top; the goal is a stream rate of at least 90% of the
ceiling, i.e. moving batches to the GPU costs the data pipeline (almost) nothing.

    python benchmarks/gpu_stream.py --images DIR [--batch 64] [--workers 8 15] [--min-images 4000]

DIR is an ImageNet-layout folder (<wnid>/*.JPEG). Its images are repeated until a pass holds
`--min-images`, so short folders still give steady-state rates; every file is read once first,
so both modes read from the page cache. The two modes alternate, `--repeats` times each, and
the medians are reported. Writes benchmarks/gpu_stream.json (or --out).

What bounds the ceiling depends on the machine: on a 16-core H100 machine it was the worker
processes' result pipe (float32 batches, ~600 KB an image), not the decoding itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = 0.90


def _rates(batches, sizes, finish=lambda: None) -> dict:
    """Overall images/s, seconds to the first batch (pool start-up), and the steady rate after it."""
    start = time.perf_counter()
    first_at, first_size, images = None, 0, 0
    for b in batches:
        n = sizes(b)
        images += n
        if first_at is None:
            first_at, first_size = time.perf_counter(), n
    finish()
    end = time.perf_counter()
    return {"rate": images / (end - start), "images": images, "first_batch_s": first_at - start,
            "steady_rate": (images - first_size) / (end - first_at)}


def decode_ceiling(dataset, batch: int, workers: int) -> dict:
    from calib.data.loader import iter_batches

    return _rates(iter_batches(dataset, batch, workers=workers), lambda b: len(b.keys))


def stream_rate(dataset, batch: int, workers: int) -> dict:
    import torch

    from calib.data.gpu_stream import GpuBatchStream

    with GpuBatchStream(dataset, batch, workers=workers) as stream:
        # synchronize: every copy has landed in GPU memory before the clock stops
        return _rates(stream, lambda b: b.size, torch.cuda.synchronize)


def h2d_gbps(shape) -> float:
    """Pinned host -> device copy bandwidth for one batch, for context."""
    import torch

    host = torch.empty(shape, pin_memory=True)
    dev = torch.empty(shape, device="cuda")
    for _ in range(3):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return host.numel() * 4 * reps / (time.perf_counter() - start) / 1e9


def versions() -> dict:
    import numpy
    import PIL
    import torch

    import calib

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "numpy": numpy.__version__, "pillow": PIL.__version__, "calib": calib.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="ImageNet-layout folder")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="decode worker counts to measure (default: calib's default)")
    parser.add_argument("--min-images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="efficientnet-lite")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_stream.json")
    args = parser.parse_args()

    import torch

    from calib.data.dataset import Dataset
    from calib.data.loader import default_workers
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset

    if not torch.cuda.is_available():
        sys.exit("this benchmark needs an NVIDIA GPU with CUDA")
    base = Dataset.of(imagenet_val(args.images), get_preset(args.preset))
    for s in base.samples:       # warm the page cache: both modes then read from memory
        Path(s.key).read_bytes()
    dataset = base.subset(base.samples * math.ceil(args.min_images / len(base)))
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()     # CUDA context created before anything is timed
    size = get_preset(args.preset).size

    runs = []
    for workers in args.workers or [default_workers()]:
        measured = {decode_ceiling: [], stream_rate: []}
        for r in range(args.repeats):
            order = (decode_ceiling, stream_rate) if r % 2 == 0 else (stream_rate, decode_ceiling)
            for fn in order:
                m = fn(dataset, args.batch, workers)
                assert m["images"] == len(dataset), (m["images"], len(dataset))
                measured[fn].append(m)
                print(f"workers={workers} {fn.__name__:15s} {m['rate']:8.1f} images/s "
                      f"(first batch {m['first_batch_s']:.2f} s, then {m['steady_rate']:.1f} images/s)", flush=True)

        def median(fn, key):
            return round(statistics.median(m[key] for m in measured[fn]), 1)

        c, s = median(decode_ceiling, "rate"), median(stream_rate, "rate")
        runs.append({"workers": workers, "decode_ceiling_images_per_s": c, "stream_images_per_s": s,
                     "ratio": round(s / c, 3), "goal_met": s / c >= GOAL,
                     "steady_ratio": round(median(stream_rate, "steady_rate") / median(decode_ceiling, "steady_rate"), 3),
                     "decode_ceiling_runs": [{k: round(v, 3) for k, v in m.items()} for m in measured[decode_ceiling]],
                     "stream_runs": [{k: round(v, 3) for k, v in m.items()} for m in measured[stream_rate]]})
        print(f"workers={workers}: stream {s:.1f} / ceiling {c:.1f} images/s = {s / c:.3f}", flush=True)

    first = runs[0]
    result = {
        "benchmark": "GpuBatchStream images/s into GPU memory vs decode ceiling (iter_batches alone)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "node": platform.node()},
        "gpu": torch.cuda.get_device_name(0),
        "versions": versions(),
        "images_folder": str(args.images), "distinct_images": len(base), "images_per_pass": len(dataset),
        "preset": args.preset, "image_size": size, "batch": args.batch, "repeats": args.repeats,
        "pinned_h2d_GBps": round(h2d_gbps((args.batch, 3, size, size)), 2),
        "goal": f"stream >= {GOAL:.0%} of decode ceiling",
        "workers": first["workers"],
        "decode_ceiling_images_per_s": first["decode_ceiling_images_per_s"],
        "stream_images_per_s": first["stream_images_per_s"],
        "ratio": first["ratio"], "goal_met": first["goal_met"],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
