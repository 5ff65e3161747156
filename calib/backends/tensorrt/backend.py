"""The two TensorRT-family backends calib offers: `tensorrt` (TensorRT 8 to 11, builds and runs on
an NVIDIA GPU) and `tensorrt-rtx` (TensorRT-RTX: builds ahead of time without a GPU for a
compute-capability target, runs on RTX GPUs). Both build INT8 from the `tensorrt` Q/DQ flavor
and share the builder, the runner and the engine sidecar; their differences are probed features
(probe.py) turned into a plan (plan.py). The bindings are imported when a backend is constructed,
so a missing one is a one-line MissingDependency there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from calib.backends.base import Backend
from calib.errors import CalibError

from .builder import build_engine
from .gpu import find_gpu, rtx_run_problem, sm_text, tensorrt_run_problem
from .plan import COMPUTE_CAPABILITIES
from .probe import NAMES, TENSORRT, TENSORRT_RTX, import_product, probe
from .provenance import read_sidecar, warn_if_foreign
from .runner import TrtRunner

BUILD_OPTIONS = {"calibrator", "calibration_cache", "compute_capability", "input_shapes"}


class _TensorRTFamily(Backend):
    product: ClassVar[str]
    qdq_flavor = "tensorrt"   # symmetric int8, zero point 0, float bias: what TensorRT builds

    def __init__(self, device: str = "cuda") -> None:
        self.trt = import_product(self.product)
        self.features = probe(self.trt, self.product)
        self.version = self.features.version
        self.device = device

    @property
    def label(self) -> str:
        return NAMES[self.product]

    def artifact_suffix(self) -> str:
        return ".engine"

    def build(self, onnx_path: Path, out: Path, precision: str = "fp32", *, fp16: bool = False,
              min_batch: int | None = None, opt_batch: int | None = None, max_batch: int | None = None,
              workspace_mib: int | None = None, timing_cache: Path | None = None, **options: Any) -> Path:
        """Build `onnx_path` (FP32, or the tensorrt Q/DQ flavor with precision 'int8') into an engine
        at `out`, with its sidecar `<out>.calib.json`.

        Options: min_batch, opt_batch, max_batch (optimization profile of a dynamic batch axis;
        defaults 1, max, 32; ignored for a fixed batch), workspace_mib (builder workspace limit),
        timing_cache (loaded if the file exists, saved after the build; TensorRT only), fp16
        (TensorRT <= 10), calibrator / calibration_cache (implicit INT8, TensorRT <= 10),
        compute_capability (TensorRT-RTX) and input_shapes (input name -> the dimensions after the
        batch axis, for those the ONNX file leaves dynamic). What does not apply to this product
        ends in a one-line CalibError from the plan."""
        unknown = sorted(set(options) - BUILD_OPTIONS)
        if unknown:
            raise CalibError(f"unknown {self.label} build option(s): {', '.join(unknown)}")
        return build_engine(self.trt, self.features, onnx_path, out, precision, fp16=fp16,
                            min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                            workspace_mib=workspace_mib, timing_cache=timing_cache, **options)

    def can_run(self) -> tuple[bool, str]:
        problem = self._run_problem()
        return (problem is None, problem or "")

    def _run_problem(self) -> str | None:
        return tensorrt_run_problem(find_gpu(self.device), self.label)

    def load(self, artifact: Path, device: str | None = None) -> TrtRunner:
        artifact = Path(artifact)
        if not artifact.is_file():
            raise CalibError(f"engine not found: {artifact}")
        problem = self._run_problem()
        if problem:
            raise CalibError(problem)
        data = artifact.read_bytes()
        warn_if_foreign(artifact, data)
        record = read_sidecar(artifact) or {}
        built_by = record.get("product", TENSORRT) if record else self.product
        if built_by != self.product:
            raise CalibError(f"{artifact} was built with {NAMES.get(built_by, built_by)}, not {self.label}: "
                             f"load it with --backend {built_by}")
        built_with = record.get("tensorrt_version")
        if built_with and built_with != self.version:
            raise CalibError(f"{artifact} was built with {self.label} {built_with}, this is {self.label} "
                             f"{self.version}: engines are not portable across versions, rebuild it")
        self._check_target(artifact, record)
        return TrtRunner(self.trt, data, str(artifact), device or self.device, label=self.label)

    def _check_target(self, artifact: Path, record: dict) -> None:
        """Refuse an engine built for another GPU than this one (where the sidecar says)."""


class TensorRTBackend(_TensorRTFamily):
    """ONNX -> TensorRT engine (`.engine`) on the GPU it will run on, and a runner for engines.

    Extra build options: calibrator (an IInt8 calibrator from .calibrators) and
    calibration_cache (a calib/TensorRT cache file, through a cache-only calibrator): implicit
    INT8 of a float model, where this TensorRT still has calibrators (<= 10)."""

    name = "tensorrt"
    product = TENSORRT


class TensorRTRTXBackend(_TensorRTFamily):
    """ONNX -> TensorRT-RTX engine, built ahead of time without a GPU for one compute capability.

    Extra build option: compute_capability (86, 89 or 120; default 89). Networks are always
    strongly typed: INT8 comes only from the tensorrt Q/DQ flavor (no calibrators, no precision
    flags). Running an engine needs an RTX-class GPU of that compute capability; TensorRT-RTX
    does not run on 9.0 (H100/H200)."""

    name = "tensorrt-rtx"
    product = TENSORRT_RTX

    def _run_problem(self) -> str | None:
        # The GPUs calib's engines can run on: its targets that this TensorRT-RTX offers.
        targets = tuple(c for c in self.features.compute_capabilities if c in COMPUTE_CAPABILITIES)
        return rtx_run_problem(find_gpu(self.device), self.label, targets)

    def _check_target(self, artifact: Path, record: dict) -> None:
        target = record.get("compute_capability")
        gpu = find_gpu(self.device)
        if isinstance(target, int) and not isinstance(gpu, str) and gpu.sm != target:
            raise CalibError(f"{artifact} was built for compute capability {sm_text(target)}, this GPU is "
                             f"{gpu.label}: rebuild it with --compute-capability {gpu.sm}")
