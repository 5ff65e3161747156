"""Which TensorRT is here, and what its Python API offers: features, never version numbers.

Two NVIDIA products share one API shape:

- TensorRT (module `tensorrt`; pip `tensorrt`, or `tensorrt-cuXX`), 8.x to 11.x, builds on the
  GPU it will run on;
- TensorRT-RTX (pip `tensorrt-rtx-cu13-bindings` + `tensorrt-rtx-cu13-libs`, module
  `tensorrt_rtx_bindings`; NVIDIA's own wheel: `tensorrt_rtx`), which compiles ahead of time
  for compute-capability targets without a GPU and finishes kernels on the RTX GPU at run time.

Their version numbers cannot be compared (TensorRT-RTX 1.7 is newer than TensorRT 10 and has
no `EXPLICIT_BATCH`), so calib asks the API: which NetworkDefinitionCreationFlag and BuilderFlag
members exist, whether IBuilderConfig has `int8_calibrator` and `set_calibration_profile`
(implicit INT8), whether it has `set_compute_capability`/`num_compute_capabilities` and a
`ComputeCapability` enum (ahead-of-time targets), whether `Builder.max_batch_size` exists
(implicit-batch networks, TensorRT <= 8). `plan.py` turns these into build decisions. Pages:

- TensorRT 10 -> 11 removed APIs (BuilderFlag.FP16/INT8, int8_calibrator, set_calibration_profile):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
- TensorRT-RTX CPU-only AOT and compute capabilities (set_compute_capability, ComputeCapability):
  https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/cpu-engines.html
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from calib.errors import MissingDependency

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt-rtx"
NAMES = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}

TENSORRT_HINT = ("pip install tensorrt (TensorRT runs only on an NVIDIA GPU with a CUDA driver; "
                 "use --backend ort on CPU)")
TENSORRT_RTX_HINT = ("pip install 'calib[tensorrt-rtx]' (the tensorrt-rtx-cu13-bindings and "
                     "tensorrt-rtx-cu13-libs wheels; they build engines without a GPU)")

# Module names tried in order. The PyPI wheels install `tensorrt_rtx_bindings`; NVIDIA's
# tarball wheel installs `tensorrt_rtx`. TensorRT's split pip wheels name theirs `tensorrt_bindings`.
_MODULES = {TENSORRT: ("tensorrt", "tensorrt_bindings"), TENSORRT_RTX: ("tensorrt_rtx_bindings", "tensorrt_rtx")}


def import_product(product: str) -> ModuleType:
    """The Python bindings of `product` (TENSORRT or TENSORRT_RTX), or a one-line MissingDependency."""
    for module in _MODULES[product]:
        try:
            return importlib.import_module(module)
        except (ImportError, OSError):  # OSError: bindings present, native libraries not loadable
            continue
    if product == TENSORRT:
        raise MissingDependency("tensorrt", "the TensorRT backend", TENSORRT_HINT)
    raise MissingDependency("tensorrt-rtx-cu13-bindings", "the TensorRT-RTX backend", TENSORRT_RTX_HINT)


def _members(enum) -> frozenset[str]:
    if enum is None:
        return frozenset()
    names = getattr(enum, "__members__", None)
    if names is not None:
        return frozenset(names)
    return frozenset(n for n in dir(enum) if n.isupper())  # plain namespaces (test stand-ins)


@dataclass(frozen=True)
class Features:
    product: str                           # TENSORRT or TENSORRT_RTX: which bindings were imported
    version: str
    network_flags: frozenset[str]          # NetworkDefinitionCreationFlag members
    builder_flags: frozenset[str]          # BuilderFlag members
    implicit_batch: bool                   # Builder.max_batch_size exists (TensorRT <= 8)
    int8_calibrator: bool                  # IBuilderConfig.int8_calibrator exists (implicit INT8)
    calibration_profile: bool              # IBuilderConfig.set_calibration_profile exists
    timing_cache: bool                     # IBuilderConfig.create_timing_cache / set_timing_cache exist
    compute_capabilities: tuple[int, ...]  # ahead-of-time targets (ComputeCapability.SMxy), () if none

    @property
    def display(self) -> str:
        return f"{NAMES.get(self.product, self.product)} {self.version}"

    @property
    def weak_typing(self) -> bool:
        """Precision flags exist, so a network is weakly typed unless STRONGLY_TYPED is asked for."""
        return bool({"INT8", "FP16"} & self.builder_flags)

    @property
    def ahead_of_time(self) -> bool:
        """The builder compiles for compute-capability targets instead of timing kernels on a GPU."""
        return bool(self.compute_capabilities)


def compute_capability_targets(trt: ModuleType) -> tuple[int, ...]:
    """SMxy members of trt.ComputeCapability as integers (SM89 -> 89), when IBuilderConfig can
    set them; () otherwise."""
    config = getattr(trt, "IBuilderConfig", None)
    enum = getattr(trt, "ComputeCapability", None)
    if enum is None or not all(hasattr(config, a) for a in ("set_compute_capability", "num_compute_capabilities")):
        return ()
    return tuple(sorted(int(n[2:]) for n in _members(enum) if n.startswith("SM") and n[2:].isdigit()))


def probe(trt: ModuleType, product: str) -> Features:
    config = getattr(trt, "IBuilderConfig", None)
    return Features(
        product=product,
        version=str(getattr(trt, "__version__", "unknown")),
        network_flags=_members(getattr(trt, "NetworkDefinitionCreationFlag", None)),
        builder_flags=_members(getattr(trt, "BuilderFlag", None)),
        implicit_batch=hasattr(getattr(trt, "Builder", None), "max_batch_size"),
        int8_calibrator=hasattr(config, "int8_calibrator"),
        calibration_profile=hasattr(config, "set_calibration_profile"),
        timing_cache=all(hasattr(config, a) for a in ("create_timing_cache", "set_timing_cache", "get_timing_cache")),
        compute_capabilities=compute_capability_targets(trt),
    )
