"""TensorRT and TensorRT-RTX backends (optional): ONNX -> serialized engine, and an engine runner.

Modules, each importing only those listed before it:

- probe.py        which bindings are here (`tensorrt`, `tensorrt_rtx_bindings`) and their API features
- plan.py         the build plan from those features: the one place that branches
- qdq.py          what Q/DQ an ONNX model carries (and whether it is the ort flavor TensorRT refuses)
- provenance.py   the engine sidecar: engines are code
- logger.py       a TensorRT logger that keeps errors for one-line messages
- calibrators.py  IInt8 calibrators fed by calib's data pipeline (implicit INT8, TensorRT <= 10)
- builder.py      parse, configure, build, write engine + sidecar
- gpu.py          the CUDA GPU here, and whether a product can run engines on it
- runner.py       run an engine through torch CUDA buffers
- backend.py      TensorRTBackend (`tensorrt`) and TensorRTRTXBackend (`tensorrt-rtx`)

Importing this package imports neither product's bindings; constructing a backend does.
What has run where: docs/tensorrt.md.
"""

from __future__ import annotations

from .backend import TensorRTBackend, TensorRTRTXBackend
from .plan import COMPUTE_CAPABILITIES, DEFAULT_COMPUTE_CAPABILITY, PRECISIONS

__all__ = ["COMPUTE_CAPABILITIES", "DEFAULT_COMPUTE_CAPABILITY", "PRECISIONS", "TensorRTBackend",
           "TensorRTRTXBackend"]
