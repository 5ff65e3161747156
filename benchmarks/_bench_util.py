"""Helpers of benchmarks/calibration.py: memory of a process tree, child processes, the
TensorRT-validity check of a Q/DQ graph, ONNX Runtime's chunked calibration reader, machine
facts and RESULTS.md upkeep."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

GB = 1e9  # goals are in decimal gigabytes


# ------------------------------------------------------------------------------------ memory
def _pss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryMonitor:
    """Peak memory of this process and its descendants (decoding workers).

    - main_peak: the kernel's high-water mark of this process (ru_maxrss, RUSAGE_SELF), exact.
    - children_peak: the largest high-water mark of any finished child (RUSAGE_CHILDREN).
    - tree_rss_peak: the largest sum of RSS over the tree, sampled every `interval` s; it counts
      pages shared between the forked workers and this process once per process (an upper bound).
    - tree_pss_peak: the same with PSS (shared pages split between the processes mapping them),
      the best single figure for "memory the calibration took"; sampled, so short spikes can hide.
    """

    def __init__(self, interval: float = 0.1):
        import psutil

        self.interval = interval
        self.proc = psutil.Process()
        self.tree_rss_peak = 0
        self.tree_pss_peak = 0
        self.max_processes = 1
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-monitor", daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return
        rss = pss = 0
        for p in procs:
            try:
                r = p.memory_info().rss
            except psutil.Error:
                continue
            rss += r
            pss += _pss_bytes(p.pid) or r
        self.tree_rss_peak = max(self.tree_rss_peak, rss)
        self.tree_pss_peak = max(self.tree_pss_peak, pss)
        self.max_processes = max(self.max_processes, len(procs))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemoryMonitor":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def result(self) -> dict:
        return {"main_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "children_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                "tree_rss_peak": self.tree_rss_peak, "tree_pss_peak": self.tree_pss_peak,
                "max_processes": self.max_processes, "samples": self.samples}


# ------------------------------------------------------------------------------ child processes
def run_child(script: Path, kind: str, params: dict, workdir: Path, name: str) -> dict:
    """Run `script --child kind` in a fresh interpreter; it writes its result as JSON. A failed
    child gives {"error": ...} with the tail of its log, so one failure does not end the run."""
    result = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    cmd = [sys.executable, str(script), "--child", kind, "--params", json.dumps(params), "--result", str(result)]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"  !! child {name} failed (exit {proc.returncode}); log {log}:\n     " + "\n     ".join(tail),
              file=sys.stderr)
        return {"error": f"exit {proc.returncode}: {tail[-1] if tail else ''}"[:300], "process_s": elapsed}
    out = json.loads(result.read_text())
    out["process_s"] = round(elapsed, 2)
    return out


def write_result(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1))


# --------------------------------------------------------------------------- TensorRT validity
def trt_validity(model) -> dict:
    """TensorRT's explicit quantization takes int8 Q/DQ with zero point 0 only: check that every
    QuantizeLinear of an activation (input not a constant) has an int8 zero point equal to 0
    (a missing zero point means uint8 before opset 21), and likewise every DequantizeLinear of a
    constant weight. Returns counts and the first offenders."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = model.graph
    consts = {i.name: i for i in g.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant" and n.attribute})

    def zp_ok(node) -> bool:
        if len(node.input) > 2 and node.input[2]:
            zp = consts.get(node.input[2])
            return zp is not None and zp.data_type == onnx.TensorProto.INT8 and not np.any(numpy_helper.to_array(zp))
        out_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return out_dtype == onnx.TensorProto.INT8

    acts = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts]
    weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in consts
               and consts[n.input[0]].data_type == onnx.TensorProto.INT8]
    bad = [n.name or n.input[0] for n in acts if not zp_ok(n)]
    bad_w = [n.name or n.input[0] for n in weights if not zp_ok(n)]
    return {"activation_quantize": len(acts), "activation_bad": len(bad), "first_bad": bad[:3],
            "int8_weight_dequantize": len(weights), "weight_bad": len(bad_w),
            "valid": bool(acts) and not bad and not bad_w}


# ----------------------------------------------------------------- ONNX Runtime's data reader
def plan_chunks(images: int, target: int = 100, batches=(4, 5, 2, 1)) -> tuple[int, int]:
    """(images per get_next, get_next calls per chunk) for quantize_static's CalibStridedMinMax.

    Every batch within a chunk must have the same shape (ORT stacks a chunk's outputs with
    np.asarray) and the reader's length must be a multiple of the stride, so the batch divides
    the image count and the chunk (batch * stride) divides it too: the largest such chunk of at most
    `target` images (memory grows with the chunk: about 65 MB per image for EfficientNet-Lite0)."""
    batch = next(b for b in batches if images % b == 0)
    items = images // batch
    strides = [s for s in range(1, items + 1) if items % s == 0]
    fitting = [s for s in strides if s * batch <= target]
    return batch, max(fitting) if fitting else 1


def chunked_reader(dataset, input_name: str, batch: int):
    """A CalibrationDataReader over `dataset` in batches of `batch` images, decoded by calib's
    worker pool (the same decoding as calib's own calibration). quantize_static with
    CalibStridedMinMax=stride calls set_range(start, start + stride) and then collect_data, which
    keeps every activation of those batches in memory until the chunk's histograms are merged."""
    from onnxruntime.quantization import CalibrationDataReader

    from calib.data import iter_batches

    class ChunkedReader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter_batches(dataset, batch, progress=None)
            self.total = -(-len(dataset) // batch)
            self.position = 0
            self.end = self.total
            self.chunks = 0

        def __len__(self) -> int:
            return self.total

        def set_range(self, start_index: int, end_index: int) -> None:
            if start_index != self.position:
                raise RuntimeError(f"chunks must come in order: asked for {start_index}, at {self.position}")
            self.end = min(end_index, self.total)
            self.chunks += 1

        def get_next(self):
            if self.position >= self.end:
                return None
            b = next(self.batches, None)
            if b is None:
                return None
            if len(b.keys) != batch:
                raise RuntimeError("an image could not be decoded: ORT's histogram collector needs equal batches")
            self.position += 1
            return {input_name: b.images}

        def close(self) -> None:
            self.batches.close()

    return ChunkedReader()


# ----------------------------------------------------------------------------- machine facts
def machine_info() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    import calib

    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "ram_gb": round(psutil.virtual_memory().total / GB, 1), "load_avg_at_start": os.getloadavg(),
            "os": platform.platform(), "python": platform.python_version(),
            "versions": {"calib": calib.__version__, "onnxruntime": version("onnxruntime"), "onnx": version("onnx"),
                         "numpy": version("numpy"), "torch": version("torch"), "psutil": version("psutil")}}


# ---------------------------------------------------------------------------------- RESULTS.md
PRESERVED = (("<!-- gpu-stream:begin -->", "<!-- gpu-stream:end -->"), ("<!-- gpu:begin -->", "<!-- gpu:end -->"),
             ("<!-- gpu-pass:begin -->", "<!-- gpu-pass:end -->"),               # benchmarks/gpu_pass.py
             ("<!-- corpus-tasks:begin -->", "<!-- corpus-tasks:end -->"))       # benchmarks/corpus_tasks.py
LIMITS = ("<!-- limits:begin -->", "<!-- limits:end -->")


def _block(text: str, begin: str, end: str) -> str | None:
    m = re.search(re.escape(begin) + r".*?" + re.escape(end), text, re.S)
    return m.group(0) if m else None


def write_results_md(path: Path, body: str, limits_placeholder: str) -> None:
    """Write `body`; keep the "What limits it" text between LIMITS markers if someone filled it,
    and append every PRESERVED section (owned by other benchmarks) of the old file unchanged."""
    old = path.read_text() if path.is_file() else ""
    limits = _block(old, *LIMITS) or f"{LIMITS[0]}\n{limits_placeholder}\n{LIMITS[1]}"
    text = body.replace("{{LIMITS}}", limits).rstrip() + "\n"
    for begin, end in PRESERVED:
        kept = _block(old, begin, end)
        if kept:
            text += "\n" + kept + "\n"
    path.write_text(text)


def fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
