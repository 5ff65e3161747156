"""The task corpus's pipeline (issue 21, "Tests and corpus"), as a user's export goes through calib's
command line: shared by tests/corpus/test_task_corpus.py and benchmarks/corpus_tasks.py.

For each architecture (vision_tasks.ARCHS and task_archs' BERT-like model) and exporter (legacy,
dynamo): the export -> `calib calibrate` -> `calib run --task ... --dataset images|npz` in each Q/DQ
flavor -> `calib build --qdq-flavor tensorrt` -> TensorRT-RTX's parser and builder (trt_rtx.py). For
the detectors, the top-k check of tests/quantize/head_models.py on the real evaluation images: the
default placement, convolutions only, the head quantized, and the default with the ort flavor's
integer SiLU gates and Concats left float, from the run's own ranges.

Data: real photos of the shared ImageNet sample, picked by a seeded permutation of their sorted
paths and linked (never copied) into folders under the work folder: `bn` (64 images that set the
BatchNorm statistics of the random-weight parts), `calibration` and `evaluation`, disjoint. The
BERT-like model reads folders of .npz files of seeded token ids and padding masks, one sample each.
Every command is a fresh `python -m calib.cli` process, so an exit status is the command line's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import task_archs
import vision_tasks

ROOT = Path(__file__).resolve().parents[2]
EXPORTERS = ("legacy", "dynamo")
FLAVORS = ("tensorrt", "ort")
ARCHS = (*vision_tasks.ARCHS, "bert")
DETECTORS = tuple(name for name, a in vision_tasks.ARCHS.items() if a.task == "detect")
BN_IMAGES = 64
# What the ort flavor quantizes in a YOLOv8 body beyond its convolutions' inputs (docs/quantization.md:
# SiLU's QLinearSigmoid + QLinearMul, QLinearConcat); the tensorrt flavor quantizes none of them.
INTEGER_BODY = ("Sigmoid", "Mul", "Concat")
BODY_FLOAT = "default, SiLU and Concat float"
LENGTH = 16     # BERT's sequence


def cli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`calib ARGS` in a fresh interpreter (this checkout's calib first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, "-m", "calib.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def link_images(sample: Path, folder: Path, counts: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Disjoint folders of symbolic links to the sample's photos, `counts` images each, in order."""
    files = sorted(p for p in (sample / "val").rglob("*") if p.is_file())
    order = np.random.default_rng(seed).permutation(len(files))
    folders, start = {}, 0
    for name, n in counts.items():
        if start + n > len(files):
            raise ValueError(f"the sample has {len(files)} images, {sum(counts.values())} asked for")
        dest = folder / name
        dest.mkdir(parents=True, exist_ok=True)
        for i in order[start:start + n]:
            (dest / files[i].name).symlink_to(files[i])
        folders[name], start = dest, start + n
    return folders


def token_folders(folder: Path, counts: dict[str, int]) -> dict[str, Path]:
    """Folders of .npz files, one sample each, of token_batches with one seed per folder."""
    folders = {}
    for seed, (name, n) in enumerate(counts.items(), 1):
        dest = folder / name
        dest.mkdir(parents=True, exist_ok=True)
        data = task_archs.token_batches(n, LENGTH, seed=seed)
        for i in range(n):
            np.savez(dest / f"s{i:03d}.npz", **{k: v[i] for k, v in data.items()})
        folders[name] = dest
    return folders


def decode(folder: Path, preprocess: str, size: int) -> np.ndarray:
    """Every image of `folder`, decoded as calib decodes them for `--preprocess` at `size`."""
    from calib.data import Dataset, iter_batches
    from calib.data.sources import image_folder
    from calib.data.transforms import get_preset

    data = Dataset.of(image_folder(folder), get_preset(preprocess, size))
    return np.concatenate([b.images for b in iter_batches(data, 16, workers=0)])


@dataclass
class Step:
    """One command: its exit status, seconds and the last line of its stderr (an error's)."""
    args: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and "Traceback" not in self.stderr

    def why(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return f"calib {' '.join(self.args[:1])} exited {self.returncode}: " + (lines[-1] if lines else "")


@dataclass
class Case:
    """One architecture and exporter through the pipeline (each step filled on first request)."""
    arch: str
    exporter: str
    model: Path
    export_seconds: float
    calibrate: Step | None = None
    cache: Path | None = None
    runs: dict = field(default_factory=dict)     # flavor -> (Step, report.json or None)
    builds: dict = field(default_factory=dict)   # flavor -> (Step, path)
    trt: object = None                           # trt_rtx.TrtBuild of the tensorrt flavor


class TaskCorpus:
    """Exports, commands and their results, made on first request and kept (a session's fixture,
    or one benchmark run). `calibration` and `evaluation`: images (samples for BERT) in each folder;
    `run_eval`: how many of the evaluation folder `calib run` evaluates (the top-k check reads all)."""

    def __init__(self, work: Path, sample: Path, calibration: int = 8, evaluation: int = 256, run_eval: int = 8):
        self.work = work
        self.calibration, self.run_eval = calibration, run_eval
        self.images = link_images(sample, work / "images",
                                  {"bn": BN_IMAGES, "calibration": calibration, "evaluation": evaluation})
        self.tokens = token_folders(work / "tokens", {"calibration": calibration, "evaluation": evaluation})
        self.models: dict = {}
        self.cases: dict = {}
        self._decoded: dict = {}
        self._ranges: dict = {}

    def decoded(self, folder: str, arch: str) -> np.ndarray:
        """The images of folder `folder` as `arch` sees them (kept)."""
        a = vision_tasks.ARCHS[arch]
        key = folder, a.preprocess, a.size
        if key not in self._decoded:
            self._decoded[key] = decode(self.images[folder], a.preprocess, a.size)
        return self._decoded[key]

    # ----------------------------------------------------------------------------- models
    def torch_model(self, arch: str):
        if arch not in self.models:
            import torch

            if arch == "bert":
                self.models[arch] = task_archs.build_bert()
            else:
                self.models[arch] = vision_tasks.build(arch, torch.from_numpy(self.decoded("bn", arch)))
        return self.models[arch]

    def case(self, arch: str, exporter: str) -> Case:
        key = arch, exporter
        if key not in self.cases:
            folder = self.work / "models"
            folder.mkdir(exist_ok=True)
            path = folder / f"{arch}-{exporter}.onnx"
            model = self.torch_model(arch)
            start = time.perf_counter()
            if arch == "bert":
                import torch

                example = {k: torch.from_numpy(v) for k, v in task_archs.token_batches(1, LENGTH).items()}
                axes = {n: {0: "batch", 1: "sequence"} for n in (*task_archs.INPUTS, "last_hidden_state")}
                vision_tasks.export(model, path, exporter, example, task_archs.OUTPUTS, {**axes, "logits": {0: "batch"}})
            else:
                vision_tasks.export_arch(arch, model, path, exporter)
            self.cases[key] = Case(arch, exporter, path, time.perf_counter() - start)
        return self.cases[key]

    # ----------------------------------------------------------------------------- the commands
    def model_args(self, arch: str) -> list[str]:
        """What the model is and how it is fed, for calibrate, run and build."""
        if arch == "bert":
            return ["--task", "generic", "--input-shape", f"input_ids={LENGTH}"]
        a = vision_tasks.ARCHS[arch]
        return ["--task", a.task, "--preprocess", a.preprocess, "--input-size", a.size]

    def data_args(self, arch: str) -> list[str]:
        folders = self.tokens if arch == "bert" else self.images
        return ["--dataset", "npz" if arch == "bert" else "images", "--data-dir", folders["calibration"],
                "--samples", self.calibration, "--workers", 0]

    def _step(self, *args) -> Step:
        start = time.perf_counter()
        proc = cli(*args)
        return Step([str(a) for a in args], proc.returncode, time.perf_counter() - start, proc.stdout, proc.stderr)

    def calibrated(self, arch: str, exporter: str) -> Case:
        """`calib calibrate`: the cache every later step of the case reads."""
        c = self.case(arch, exporter)
        if c.calibrate is None:
            c.calibrate = self._step("calibrate", "--model", c.model, *self.model_args(arch), *self.data_args(arch),
                                     "--cache-dir", self.work / "caches" / f"{arch}-{exporter}")
            if c.calibrate.ok:
                c.cache = Path(c.calibrate.stdout.strip().splitlines()[-1])
        return c

    def run(self, arch: str, exporter: str, flavor: str) -> tuple[Step, dict | None]:
        """`calib run` in `flavor` on the evaluation folder, after `calibrate` (whose cache it reuses)."""
        c = self.calibrated(arch, exporter)
        if flavor not in c.runs:
            folders = self.tokens if arch == "bert" else self.images
            out = self.work / "runs" / f"{arch}-{exporter}-{flavor}"
            step = self._step("run", "--model", c.model, *self.model_args(arch), *self.data_args(arch),
                              "--eval-data-dir", folders["evaluation"], "--eval-samples", self.run_eval,
                              "--qdq-flavor", flavor, "--cache-dir", self.work / "caches" / f"{arch}-{exporter}",
                              "--speed-seconds", 0, "--no-html", "--out", out)
            report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
            c.runs[flavor] = step, report
        return c.runs[flavor]

    def build(self, arch: str, exporter: str, flavor: str = "tensorrt") -> tuple[Step, Path]:
        """`calib build --qdq-flavor FLAVOR` from the case's cache."""
        c = self.calibrated(arch, exporter)
        if flavor not in c.builds:
            out = self.work / "builds" / f"{arch}-{exporter}-{flavor}.onnx"
            out.parent.mkdir(exist_ok=True)
            step = self._step("build", "--model", c.model, *self.model_args(arch), "--cache", c.cache,
                              "--qdq-flavor", flavor, "--out", out)
            c.builds[flavor] = step, out
        return c.builds[flavor]

    def tensorrt_rtx(self, arch: str, exporter: str, rtx):
        """The tensorrt flavor `calib build` wrote, through TensorRT-RTX's parser and builder (`rtx`:
        a trt_rtx.TrtRtx)."""
        c = self.case(arch, exporter)
        if c.trt is None:
            step, path = self.build(arch, exporter, "tensorrt")
            if step.ok:
                c.trt = rtx.build_inputs(path)
        return c.trt

    # ----------------------------------------------------------------------------- the top-k check
    def ranges(self, arch: str, exporter: str):
        """The prepared model of a detector's case (calib's intake), minmax ranges of its every float
        activation on the calibration images, and whether those are the ranges of the case's cache
        (the run's calibration)."""
        if (arch, exporter) not in self._ranges:
            from calib.models import prepared_model, resolve_model

            from tests.quantize import head_models as hm

            c = self.calibrated(arch, exporter)
            a = vision_tasks.ARCHS[arch]
            prepared = prepared_model(resolve_model(str(c.model), a.preprocess, a.size, a.task))
            amax = hm.minmax_ranges(prepared, self.decoded("calibration", arch))
            cached = json.loads(c.cache.with_suffix(".json").read_text())["tensors"]
            match = all(np.isclose(amax[t], v["amax"], rtol=1e-5, atol=0) for t, v in cached.items())
            self._ranges[arch, exporter] = prepared, amax, bool(match)
        return self._ranges[arch, exporter]

    def topk(self, arch: str, exporter: str, flavor: str) -> dict:
        """The detector's top-k overlaps with FP32 on every evaluation image, per placement (default,
        convs only, head quantized: tests/quantize/head_models.py; and the default with the ort
        flavor's integer SiLU gates and Concats left float, INTEGER_BODY), from `ranges`;
        `ranges_match`: whether those are the ranges `calib calibrate` wrote."""
        from calib.quantize import quantize_model

        from tests.quantize import head_models as hm

        prepared, amax, match = self.ranges(arch, exporter)
        head = prepared.graph.output[-1].name   # YOLO's one output; an SSD's scores
        x = self.decoded("evaluation", arch)
        qdq = hm.placements(prepared, amax, flavor, head)
        qdq[BODY_FLOAT] = quantize_model(prepared, amax, flavor, exclude_ops=INTEGER_BODY)[0]
        return {"ks": list(hm.KS), "images": len(x), "head": head, "ranges_match": match,
                "overlap": hm.topk_overlaps(prepared, qdq, x)}
