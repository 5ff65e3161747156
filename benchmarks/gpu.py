"""GPU benchmark: decode paths, FP32+INT8 evaluation end to end, calibration, several GPUs.

    python benchmarks/gpu.py --images DIR --fp32 M.onnx --int8 M-int8.onnx [--repeat-to 50000]
    python benchmarks/gpu.py --render benchmarks/gpu.json   # -> the RESULTS section (markdown)

Runs on a machine with an NVIDIA GPU, torchvision and onnxruntime-gpu. Everything is measured
in one run, each figure next to the ceilings it is bounded by:

1. decode paths on the sample images: the CPU path (Pillow) against nvJPEG + Pillow-exact GPU
   resize, nvJPEG + torch's antialiased resize, and the Pillow workers (`--gpu-decode pil`,
   which must be exact); mean / 99th percentile / max absolute difference in 8-bit levels; FP32
   top-1 on each path and their agreement;
2. INT8 on the GPU (CUDA provider) vs on the CPU (CPU provider), same (Pillow) inputs;
3. ceilings at batch 256: decode alone (nvJPEG, and Pillow in worker processes: `--gpu-decode
   pil`) and while both models run, each model alone, both models in two threads (also next to
   processes that only load the CPU and memory); then FP32+INT8
   evaluation end to end over the sample folder repeated to `--repeat-to` images (decode
   included), with either decoder, the two models run one after the other and overlapped;
4. calibration: the 500-image pass (entropy + minmax statistics and the channel means, as
   `calib calibrate` collects them) in the CUDA provider, seconds after the model is loaded;
   the cache scales against the CPU path's on the same (Pillow) inputs, in histogram bins;
5. with two or more GPUs: the same evaluation and calibration split over them, the speed-up,
   and whether the merged statistics and the cache are bit-identical to one GPU's.

Writes `--out` (JSON) after every section, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS: dict = {}


def save(out: Path) -> None:
    out.write_text(json.dumps(RESULTS, indent=2, default=float) + "\n")


def section(name: str, out: Path):
    def wrap(fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                RESULTS[name] = fn(*a, **k)
            except Exception as e:  # a failed section is reported, the others still run
                RESULTS[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
                print(f"[{name}] FAILED: {type(e).__name__}: {e}", flush=True)
            RESULTS.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t, 2)
            save(out)
            print(f"[{name}] {time.perf_counter() - t:.1f} s", flush=True)
            return RESULTS[name]
        return run
    return wrap


def levels(a: np.ndarray, b: np.ndarray, std) -> dict:
    d = np.abs(a - b) * np.asarray(std, np.float32)[None, :, None, None]
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": float(d.max()),
            "exact_fraction": float(np.mean(d < 1e-3))}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def timed_run(runner, x, iters: int = 30) -> float:
    import torch

    for _ in range(3):
        runner.infer(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        runner.infer(x)
    torch.cuda.synchronize()
    return x.shape[0] * iters / (time.perf_counter() - t)


def resample_torch(images, preprocess):
    """This benchmark's own GPU resize variant: the CPU path's crop, then torch's antialiased
    interpolate (per image: sizes differ), rounded to 8 bits. Close to Pillow, not equal (calib
    resizes exactly as Pillow does); measured here for the difference."""
    import torch
    import torch.nn.functional as F

    from calib.data.resize_plan import crop_plan

    s = preprocess.size
    out = torch.empty((len(images), 3, s, s), dtype=torch.uint8, device=images[0].device)
    for i, im in enumerate(images):
        px, py = crop_plan(preprocess, int(im.shape[2]), int(im.shape[1]))
        # The box is integer in both presets: crop it, resize it, then take the kept window.
        region = im[:, int(py.in0):int(py.in1), int(px.in0):int(px.in1)].unsqueeze(0).float()
        r = F.interpolate(region, size=(py.out_size, px.out_size), mode=preprocess.interpolation,
                          antialias=True, align_corners=False)
        r = r[:, :, py.keep:py.keep + s, px.keep:px.keep + s]
        out[i] = r.round_().clamp_(0, 255).to(torch.uint8)[0]
    return out


@contextmanager
def torch_resize(on: bool = True):
    """While inside, nvJPEG batches are resized with `resample_torch` instead of Pillow's arithmetic."""
    from calib.data.gpu_decode import GpuDecoder

    if not on:
        yield
        return
    pixels = GpuDecoder.pixels
    GpuDecoder.pixels = lambda self, decoded: resample_torch(decoded, self.preprocess)
    try:
        yield
    finally:
        GpuDecoder.pixels = pixels


# The GIL hand-over interval the end-to-end runs use: calib used to set it while a GPU decode stream
# ran, and measured no difference (3,817 against 3,815 images/s with the default 5 ms, `--gpu-decode
# pil`, on an H200), so calib leaves Python's default; the runs here keep the setting, to compare.
GIL_SWITCH_INTERVAL = 0.0005


@contextmanager
def gil_switch_interval(seconds: float | None):
    """This benchmark's own variant of the GIL hand-over setting: `sys.setswitchinterval` while
    inside (never longer than it was), Python's own interval for None."""
    before = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=Path)
    p.add_argument("--fp32", type=Path)
    p.add_argument("--int8", type=Path)
    p.add_argument("--repeat-to", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--calib-batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu.json")
    p.add_argument("--render", type=Path, help="print the markdown section for a gpu.json")
    p.add_argument("--skip", nargs="*", default=[])
    args = p.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    run(args)


def run(args) -> None:
    import torch

    from calib.backends.ort import OrtRunner
    from calib.data.dataset import Dataset
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset
    from calib.onnx_io import require_cuda_provider

    out = args.out
    ort = require_cuda_provider()
    import torchvision

    RESULTS["environment"] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(), "pillow": __import__("PIL").__version__,
        "images": str(args.images), "batch": args.batch, "triton": _version("triton")}
    save(out)
    pre = get_preset("efficientnet-lite")
    sample = Dataset.of(imagenet_val(args.images), pre)
    n = len(sample)
    repeats = max(1, -(-args.repeat_to // n))
    big = sample.subset((sample.samples * repeats)[:args.repeat_to])
    RESULTS["environment"].update(sample_images=n, large_set=len(big))
    fp32 = OrtRunner(args.fp32, device="cuda:0")
    int8 = OrtRunner(args.int8, device="cuda:0")
    cache: dict = {}

    @section("decode_paths", out)
    def decode_paths():
        from calib.passes import batches as device_batches
        from calib.data.loader import iter_batches

        ref = np.concatenate([b.images for b in iter_batches(sample, 64, workers=8)])
        cache["pil"] = ref
        res = {}
        for label, decode, torch_resized in (("nvjpeg+pil-bicubic", "nvjpeg", False),
                                             ("nvjpeg+torch-bicubic-aa", "nvjpeg", True),
                                             ("pil[workers]", "pil", False)):
            with torch_resize(torch_resized):
                got = np.concatenate([b.images.cpu().numpy() for b in device_batches(sample, 64, "cuda:0", decode)])
            cache[label] = got
            res[label] = levels(got, ref, pre.std)
        return res

    @section("accuracy_paths", out)
    def accuracy_paths():
        labels = np.asarray([s.label for s in sample.samples])
        res = {}
        preds = {}
        for label in ("pil", "nvjpeg+pil-bicubic", "nvjpeg+torch-bicubic-aa"):
            x = torch.from_numpy(cache[label]).cuda()
            logits = torch.cat([fp32.infer(x[i:i + 100])[0].clone() for i in range(0, len(x), 100)])
            preds[label] = logits.argmax(1).cpu().numpy()
            res[f"fp32_top1[{label}]"] = float(np.mean(preds[label] == labels))
        for label in ("nvjpeg+pil-bicubic", "nvjpeg+torch-bicubic-aa"):
            res[f"fp32_agreement[pil vs {label}]"] = float(np.mean(preds["pil"] == preds[label]))
        # INT8: CUDA provider vs CPU provider, the same (Pillow) inputs. Both run the integer-exact
        # graph (calib.quantize.exact; on CUDA with the accumulator rounded and TF32 on); "as written"
        # is the Q/DQ graph run literally (float sums), for comparison.
        x = torch.from_numpy(cache["pil"]).cuda()

        def on_gpu(runner):
            return torch.cat([runner.infer(x[i:i + 100])[0].clone() for i in range(0, len(x), 100)]).cpu().numpy()

        def on_cpu(runner):
            return np.concatenate([runner.run(cache["pil"][i:i + 50]) for i in range(0, n, 50)])

        gpu8 = on_gpu(int8)
        cpu8 = on_cpu(OrtRunner(args.int8))
        cpu32 = on_cpu(OrtRunner(args.fp32))
        gpu8_plain = on_gpu(OrtRunner(args.int8, device="cuda:0", exact=False))
        cpu8_plain = on_cpu(OrtRunner(args.int8, exact=False))
        res["int8_exact_layers[gpu]"] = len(int8.exact.rewritten) if int8.exact else 0
        res["int8_top1[gpu]"] = float(np.mean(gpu8.argmax(1) == labels))
        res["int8_top1[cpu]"] = float(np.mean(cpu8.argmax(1) == labels))
        res["int8_agreement[gpu vs cpu]"] = float(np.mean(gpu8.argmax(1) == cpu8.argmax(1)))
        res["int8_logit_max_abs_diff[gpu vs cpu]"] = float(np.abs(gpu8 - cpu8).max())
        res["int8_logits_bit_identical[gpu vs cpu]"] = bool(np.array_equal(gpu8, cpu8))
        res["int8_agreement[as written: gpu vs cpu]"] = float(np.mean(gpu8_plain.argmax(1) == cpu8_plain.argmax(1)))
        res["int8_logit_max_abs_diff[as written: gpu vs cpu]"] = float(np.abs(gpu8_plain - cpu8_plain).max())
        res["int8_top1[as written: cpu]"] = float(np.mean(cpu8_plain.argmax(1) == labels))
        # The exact graph's variants on CUDA: without rounding the accumulator, without TF32.
        import onnx

        from calib.quantize.exact import integer_exact
        for label, rnd, tf32 in (("no round, TF32 off", False, False), ("no round, TF32 on", False, True),
                                 ("round, TF32 off", True, False)):
            blob = integer_exact(onnx.load(str(args.int8)), round_accumulator=rnd).model.SerializeToString()
            g = on_gpu(OrtRunner(blob, device="cuda:0", tf32=tf32, exact=False))
            res[f"int8_logits_bit_identical[gpu {label} vs cpu]"] = bool(np.array_equal(g, cpu8))
            res[f"int8_agreement[gpu {label} vs cpu]"] = float(np.mean(g.argmax(1) == cpu8.argmax(1)))
        res["fp32_top1[cpu provider, pil]"] = float(np.mean(cpu32.argmax(1) == labels))
        res["fp32_agreement[gpu vs cpu provider]"] = float(np.mean(cpu32.argmax(1) == preds["pil"]))
        return res

    @section("ceilings", out)
    def ceilings():
        from calib.data.gpu_stream import gpu_batches

        res = {}
        x = torch.randn((args.batch, 3, pre.size, pre.size), device="cuda:0")
        res["fp32_alone"] = timed_run(fp32, x)
        res["int8_alone"] = timed_run(int8, x)
        res["int8_alone[as written]"] = timed_run(OrtRunner(args.int8, device="cuda:0", exact=False), x)
        res["fp32_alone[TF32 on]"] = timed_run(OrtRunner(args.fp32, device="cuda:0", tf32=True), x)
        res["pair_sequential_bound"] = 1 / (1 / res["fp32_alone"] + 1 / res["int8_alone"])
        from calib.onnx_io import cuda_session

        class _Exhaustive(OrtRunner):   # ORT's default algorithm search, for reference
            def __init__(self, path):
                self.kind, self.device_id = "cuda", 0
                self.stream = torch.cuda.Stream()
                self.session = cuda_session(str(path), 0, algo_search="EXHAUSTIVE", stream=self.stream.cuda_stream)
                self.input_name = self.session.get_inputs()[0].name
                self._outputs = {}

        res["fp32_alone[exhaustive algo search]"] = timed_run(_Exhaustive(args.fp32), x)
        res["int8_alone[exhaustive algo search]"] = timed_run(_Exhaustive(args.int8), x)
        with ThreadPoolExecutor(2) as pool:
            for _ in range(3):
                list(pool.map(lambda r: r.infer(x), (fp32, int8)))
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(30):
                list(pool.map(lambda r: r.infer(x), (fp32, int8)))
            torch.cuda.synchronize()
            res["pair_overlapped"] = args.batch * 30 / (time.perf_counter() - t)
        # Pure CPU load next to the models: processes at the decode workers' niceness that spin, or
        # that copy memory, on the cores the decoders would take.
        import multiprocessing as mp

        from calib.data.host_decode import WORKER_NICE, default_gpu_workers

        def spin():
            os.nice(WORKER_NICE)
            while True:
                pass

        def copy_memory():
            os.nice(WORKER_NICE)
            a = np.ones(1 << 25, np.float32)
            b = np.empty_like(a)
            while True:
                np.copyto(b, a)

        for label, target in (("spinning", spin), ("copying_memory", copy_memory)):
            procs = [mp.get_context("fork").Process(target=target, daemon=True) for _ in range(default_gpu_workers())]
            for p in procs:
                p.start()
            time.sleep(0.5)
            try:
                with ThreadPoolExecutor(2) as pool:
                    t = time.perf_counter()
                    for _ in range(30):
                        list(pool.map(lambda r: r.infer(x), (fp32, int8)))
                    torch.cuda.synchronize()
                    res[f"pair_overlapped[{len(procs)} processes {label}]"] = args.batch * 30 / (time.perf_counter() - t)
            finally:
                for p in procs:
                    p.kill()
                for p in procs:
                    p.join()
        for label, torch_resized, decoder in (("decode_nvjpeg_pil_resize[thread]", False, "nvjpeg"),
                                              ("decode_nvjpeg_torch_resize[thread]", True, "nvjpeg"),
                                              ("decode_pil_workers[thread]", False, "pil")):
            subset = big.subset(big.samples[:min(len(big), 20_000)])
            t = time.perf_counter()
            count = 0
            with torch_resize(torch_resized):
                for b in gpu_batches(subset, args.batch, "cuda:0", decoder=decoder):
                    count += b.size
            torch.cuda.synchronize()
            res[label] = count / (time.perf_counter() - t)
        # Decoding while both models run without pause in another thread (no data dependency):
        # how much each slows the other on one GPU.
        import threading

        for label, decoder, workers in (("nvjpeg_pil_resize", "nvjpeg", None), ("pil_workers", "pil", None)):
            stop = threading.Event()
            runs = []

            def models_loop():
                with ThreadPoolExecutor(2) as pool:
                    while not stop.is_set():
                        list(pool.map(lambda r: r.infer(x), (fp32, int8)))
                        runs.append(time.perf_counter())

            loop = threading.Thread(target=models_loop)
            loop.start()
            time.sleep(1.0)
            subset = big.subset(big.samples[:10_000])
            t = time.perf_counter()
            count = sum(b.size for b in gpu_batches(subset, args.batch, "cuda:0", decoder=decoder, workers=workers))
            torch.cuda.synchronize()
            end = time.perf_counter()
            stop.set()
            loop.join()
            res[f"decode_{label}[thread, models running]"] = count / (end - t)
            res[f"pair_while_decoding[{label}]"] = args.batch * sum(t <= r <= end for r in runs) / (end - t)
        # Stream time of the Pillow-exact resize + normalisation of one batch, per kernel (CUDA events
        # around the call: the host-side table building is inside, as it is in the decode thread).
        from calib.data.gpu_decode import GpuDecoder, normalise, resample_pil

        decoded = GpuDecoder(pre, "cuda:0").decode(
            [open(s.key, "rb").read() for s in sample.samples[:args.batch]])
        for kernel in ("triton", "matmul"):
            try:
                times = []
                for _ in range(12):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    normalise(resample_pil(decoded, pre, kernel), pre)
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b))
                res[f"resize_stream_ms_per_batch[{kernel}]"] = float(np.median(times[2:]))
            except Exception as e:  # no triton here: say so
                res[f"resize_stream_ms_per_batch[{kernel}]"] = f"{type(e).__name__}: {e}"

        from calib.data.gpu_stream import GpuBatchStream

        subset = big.subset(big.samples[:3000])
        t = time.perf_counter()
        with GpuBatchStream(subset, args.batch, workers=min(15, os.cpu_count() - 1)) as s:
            count = sum(b.size for b in s)
        torch.cuda.synchronize()
        res["decode_cpu_workers_stream"] = count / (time.perf_counter() - t)
        return res

    @section("end_to_end", out)
    def end_to_end():
        from calib.data.decoders import decode_path
        from calib.passes import evaluate

        res = {}
        fp32_tf32 = OrtRunner(args.fp32, device="cuda:0", tf32=True)
        for label, concurrent, reference, decode, workers, switch in (
                ("overlapped", True, fp32, "nvjpeg", None, True),
                ("overlapped, Pillow-worker decode", True, fp32, "pil", None, True),
                ("overlapped, Pillow-worker decode, again", True, fp32, "pil", None, True),
                ("overlapped, Pillow-worker decode, default GIL switch interval", True, fp32, "pil", None, False),
                ("sequential, Pillow-worker decode", False, fp32, "pil", None, True),
                ("overlapped, Pillow-worker decode, FP32 in TF32", True, fp32_tf32, "pil", None, True)):
            with gil_switch_interval(GIL_SWITCH_INTERVAL if switch else None):
                ev, diffs = evaluate({"fp32": reference, "int8": int8}, big, args.batch, "cuda:0", decode, workers,
                                     None, concurrent=concurrent)
            images = len(ev.keys)
            res[label] = {"images": images, "seconds": ev.seconds, "images_per_s": images / ev.seconds,
                          "decode_path": decode_path(big.preprocess, decode), "fp32_top1": ev.summary("fp32")["top1"],
                          "int8_top1": ev.summary("int8")["top1"], "agreement": ev.agreement(),
                          "logit_max_abs_diff": diffs, "skipped": len(ev.skipped)}
        return res

    @section("calibration", out)
    def calibration():
        import onnx

        from calib.calibrators import get_calibrator
        from calib.calibrators.channel_means import ChannelMeans, Observers
        from calib.calibrators.statistics import TensorStatistics
        from calib.calibration import calibrated_tensors, weighted_inputs
        from calib.passes import exposed_runner, observe_pass

        prepared = onnx.load(str(args.fp32))
        tensors = calibrated_tensors(prepared)
        wi = weighted_inputs(prepared)
        t = time.perf_counter()
        runner = exposed_runner(prepared, tensors, "cuda:0")
        res = {"tensors": len(tensors), "model_load_seconds": time.perf_counter() - t, "batch": args.calib_batch}
        stats = {}
        for label, decode in (("nvjpeg", "nvjpeg"), ("nvjpeg_again", "nvjpeg"), ("pil_workers", "pil")):
            st = TensorStatistics()
            means = ChannelMeans(wi)
            r = observe_pass(prepared, sample, Observers(st, means), args.calib_batch, "cuda:0", tensors, None, None,
                             decode, runner=runner)
            res[f"seconds[{label}]"] = r.seconds
            res[f"images[{label}]"] = r.images
            stats[label] = st
        st_cpu = TensorStatistics()
        t = time.perf_counter()
        observe_pass(prepared, sample, Observers(st_cpu, ChannelMeans(wi)), batch_size=16, workers=8, progress=None,
                     tensors=tensors)
        res["seconds[cpu provider]"] = time.perf_counter() - t
        cache["stats_nvjpeg"] = stats["nvjpeg"]
        for label in ("pil_workers", "nvjpeg"):
            moved = 0.0   # the largest fraction of a tensor's values that landed in another bin
            for name in st_cpu.names():
                a, b = st_cpu._entries[name], stats[label]._entries[name]
                if a.counts is None or a.exp is None or b.exp is None:
                    continue
                ca, cb = a.counts.copy(), b.counts.copy()
                from calib.calibrators import _histogram as H

                e = max(a.exp, b.exp)
                H.fold(ca, e - a.exp)
                H.fold(cb, e - b.exp)
                moved = max(moved, float(np.abs(ca - cb).sum()) / 2 / max(a.count, 1))
            res[f"histogram_moved_fraction_max[gpu {label} vs cpu]"] = moved
            for cal in ("entropy", "minmax", "percentile"):
                g = get_calibrator(cal, stats[label]).compute()
                c = get_calibrator(cal, st_cpu).compute()
                worst_stats_bins, worst_cal_bins, worst_name, within = 0.0, 0.0, None, 0
                for name in c:
                    s = st_cpu.summary(name)
                    if s.peak == 0:
                        continue
                    exp = st_cpu._entries[name].exp
                    stat_bin = 2.0 ** exp / st_cpu.bins
                    cal_bin = s.peak / 2048
                    d = abs(g[name].amax - c[name].amax)
                    if d / stat_bin > worst_stats_bins:
                        worst_stats_bins, worst_name = d / stat_bin, name
                    worst_cal_bins = max(worst_cal_bins, d / cal_bin)
                    within += d <= stat_bin
                res[f"amax_max_diff_in_stats_bins[{cal}, gpu {label} vs cpu]"] = worst_stats_bins
                res[f"amax_max_diff_in_2048_bins[{cal}, gpu {label} vs cpu]"] = worst_cal_bins
                res[f"worst_tensor[{cal}, gpu {label} vs cpu]"] = worst_name
                res[f"tensors_within_one_bin[{cal}, gpu {label} vs cpu]"] = f"{within}/{len(c)}"
        return res

    @section("multi_gpu", out)
    def multi_gpu():
        import onnx

        from calib.calibrators.channel_means import ChannelMeans, Observers
        from calib.calibrators.statistics import TensorStatistics
        from calib.calibration import calibrated_tensors, save_calibration, weighted_inputs
        from calib.cache import CacheStore
        from calib.calibrators import get_calibrator
        from calib.passes import observe_pass
        from calib.passes.shard import evaluate_sharded, observe_sharded
        from calib.placement import Placement
        from calib.models import resolve_model

        gpus = torch.cuda.device_count()
        if gpus < 2:
            return {"skipped": f"{gpus} GPU"}
        res = {}
        models = {"fp32": str(args.fp32), "int8": str(args.int8)}
        every = Placement(tuple(range(gpus)))
        one = evaluate_sharded(models, big, Placement((0,)), args.batch)
        two = evaluate_sharded(models, big, every, args.batch)
        res["eval_images"] = one[1].images
        res["eval_seconds[1 gpu]"] = one[1].seconds
        res[f"eval_seconds[{gpus} gpus]"] = two[1].seconds
        res["eval_rank_seconds"] = two[1].rank_seconds
        res["eval_speedup"] = one[1].seconds / two[1].seconds
        res["eval_images_per_s[all gpus]"] = two[1].images / two[1].seconds
        res["eval_predictions_identical"] = bool(all(np.array_equal(one[0].predictions[k].top5, two[0].predictions[k].top5)
                                                     for k in models))
        one_t = evaluate_sharded(models, big, Placement((0,)), args.batch, decoder="pil")
        two_t = evaluate_sharded(models, big, every, args.batch, decoder="pil")
        res["eval_seconds[1 gpu, Pillow-worker decode]"] = one_t[1].seconds
        res[f"eval_seconds[{gpus} gpus, Pillow-worker decode]"] = two_t[1].seconds
        res["eval_rank_seconds[Pillow-worker decode]"] = two_t[1].rank_seconds
        res["eval_speedup[Pillow-worker decode]"] = one_t[1].seconds / two_t[1].seconds
        res["eval_images_per_s[all gpus, Pillow-worker decode]"] = two_t[1].images / two_t[1].seconds
        res["eval_predictions_identical[Pillow-worker decode]"] = bool(all(
            np.array_equal(one_t[0].predictions[k].top5, two_t[0].predictions[k].top5) for k in models))
        if "calibration" in args.skip:
            return res
        prepared = onnx.load(str(args.fp32))
        tensors = calibrated_tensors(prepared)
        wi = weighted_inputs(prepared)
        calset = big.subset(big.samples[:5000])
        single_st = TensorStatistics()
        single_means = ChannelMeans(wi)
        r = observe_pass(prepared, calset, Observers(single_st, single_means), args.calib_batch, "cuda:0", tensors, None,
                         None)
        st1, m1, r1, order1 = observe_sharded(prepared, calset, Placement((0,)), args.calib_batch, tensors, wi)
        st2, m2, r2, order2 = observe_sharded(prepared, calset, every, args.calib_batch, tensors, wi)
        res["calib_images"] = r2.images
        res["calib_seconds[in-process 1 gpu]"] = r.seconds
        res["calib_seconds[1 gpu]"] = r1.seconds
        res[f"calib_seconds[{gpus} gpus]"] = r2.seconds
        res["calib_speedup"] = r1.seconds / r2.seconds

        def same_stats(a, b):
            da, db = a.state_dict(), b.state_dict()
            return list(da["tensors"]) == list(db["tensors"]) and all(
                da["tensors"][k]["min"] == db["tensors"][k]["min"] and da["tensors"][k]["max"] == db["tensors"][k]["max"]
                and da["tensors"][k]["exp"] == db["tensors"][k]["exp"]
                and np.array_equal(da["tensors"][k]["counts"], db["tensors"][k]["counts"]) for k in da["tensors"])

        res["stats_identical[multi vs single]"] = same_stats(st2, single_st)
        res["means_identical[multi vs single]"] = all(np.array_equal(m2.sums[k], single_means.sums[k])
                                                      for k in single_means.sums) and m2.counts == single_means.counts
        model = resolve_model(str(args.fp32), "efficientnet-lite")
        texts = []
        for label, st, means in (("single", single_st, single_means), ("multi", st2, m2)):
            with tempfile.TemporaryDirectory() as tmp:
                cal = get_calibrator("entropy", st)
                o = save_calibration(model, calset, cal, CacheStore(tmp), r2.images, [], order2, args.calib_batch,
                                     0.0, means.means())
                sidecar = json.loads(o.entry.sidecar.read_text())
                sidecar.pop("seconds", None)
                texts.append((Path(o.entry.path).read_bytes(), json.dumps(sidecar, sort_keys=True)))
        res["cache_bit_identical"] = texts[0][0] == texts[1][0]
        res["sidecar_bit_identical"] = texts[0][1] == texts[1][1]
        return res

    for name, fn in (("decode_paths", decode_paths), ("accuracy_paths", accuracy_paths),
                     ("ceilings", ceilings), ("end_to_end", end_to_end), ("calibration", calibration),
                     ("multi_gpu", multi_gpu)):
        if name not in args.skip:
            fn()
    print(render(RESULTS))


def render(r: dict) -> str:
    """The GPU section of benchmarks/RESULTS.md from a gpu.json."""
    def f(v, fmt="{:,.0f}"):
        return "n/a" if v is None else fmt.format(v)

    env = r.get("environment", {})
    lines = ["## GPU", "",
             f"- Date {env.get('date')}; {env.get('gpus')} x {env.get('gpu')}, {env.get('cpus')} CPUs; torch "
             f"{env.get('torch')}, torchvision {env.get('torchvision')}, onnxruntime-gpu {env.get('onnxruntime')}, "
             f"Pillow {env.get('pillow')}",
             f"- Images: {env.get('sample_images')} sample images; the large set repeats them to "
             f"{env.get('large_set')}; batch {env.get('batch')}", ""]
    dp = r.get("decode_paths", {})
    if dp and "error" not in dp:
        lines += ["| decode path vs Pillow (CPU path) | mean abs diff (levels) | p99 | max | exact pixels |",
                  "|---|---|---|---|---|"]
        for k, v in dp.items():
            lines.append(f"| {k} | {v['mean']:.3f} | {v['p99']:.1f} | {v['max']:.0f} | {v['exact_fraction']:.1%} |")
        lines.append("")
    ap = r.get("accuracy_paths", {})
    if ap and "error" not in ap:
        lines += ["| accuracy figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" if isinstance(v, (bool, str)) else
                  f"| {k} | {v:.2%} |" if isinstance(v, float) and v <= 1 and "diff" not in k else f"| {k} | {v:.4g} |"
                  for k, v in ap.items()]
        lines.append("")
    c, e = r.get("ceilings", {}), r.get("end_to_end", {})
    if c and "error" not in c:
        lines += ["| throughput (images/s) | value |", "|---|---|"]
        lines += [f"| ceiling: {k} | {v} |" if isinstance(v, str) else
                  f"| ceiling: {k} | {f(v, '{:.2f}')} ms |" if "_ms_" in k else f"| ceiling: {k} | {f(v)} |"
                  for k, v in c.items()]
        if e and "error" not in e:
            for k, v in e.items():
                lines.append(f"| FP32+INT8 end to end ({k}, {v['decode_path']}, {v['images']:,} images) | "
                             f"{f(v['images_per_s'])} |")
        lines.append("")
    cal = r.get("calibration", {})
    if cal and "error" not in cal:
        lines += ["| calibration figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in cal.items()]
        lines.append("")
    mg = r.get("multi_gpu", {})
    if mg and "error" not in mg:
        lines += ["| several GPUs | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in mg.items()]
        lines.append("")
    for k, v in r.items():
        if isinstance(v, dict) and "error" in v:
            lines.append(f"- {k}: not measured ({v['error']})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
