"""Run a serialized TensorRT / TensorRT-RTX engine: its inputs (one image, or named arrays: a mapping
input name -> array), its outputs.

The engine API is the name-based one of TensorRT 10+ (and TensorRT-RTX, which kept it):
set_input_shape, set_tensor_address, execute_async_v3 on a CUDA stream. Pages followed:
https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/ExecutionContext.html
https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-8x-to-10x-python-api.html
and NVIDIA/TensorRT samples/python/common_runtime.py for the calling conventions.

Where the I/O lives is `CudaIO`: torch CUDA tensors and one side stream (torch is already
calib's dependency; its allocator and streams do what pycuda did in NVIDIA's samples). The
runner itself only binds addresses and reads the bound output back, so tests can hand it a
host-memory stand-in and check, without a GPU, that the logits returned are the ones the
engine wrote.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from calib.backends.base import Runner
from calib.errors import CalibError

from .logger import get_logger


def torch_dtype(torch, np_type):
    table = {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32,
             np.int64: torch.int64, np.int8: torch.int8, np.uint8: torch.uint8, np.bool_: torch.bool}
    dtype = table.get(np.dtype(np_type).type)
    if dtype is None:
        raise CalibError(f"TensorRT I/O type {np_type} is not supported by calib's runner")
    return dtype


class CudaIO:
    """Engine I/O in torch CUDA tensors, executed on one side stream of `device`."""

    def __init__(self, device: str = "cuda") -> None:
        from calib.placement import require_torch_cuda

        self.torch, self.device = require_torch_cuda(device)
        self.torch.cuda.set_device(self.device)  # TensorRT uses the current device's primary context
        self.stream = self.torch.cuda.Stream(device=self.device)

    def to_device(self, images, dtype):
        torch = self.torch
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        return x.to(device=self.device, dtype=dtype).contiguous()

    def empty(self, shape: tuple[int, ...], dtype):
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def stream_handle(self) -> int:
        """Our stream, ordered after the work already queued on the current stream (the copy of
        the input was queued there)."""
        self.stream.wait_stream(self.torch.cuda.current_stream(self.device))
        return self.stream.cuda_stream

    def synchronize(self) -> None:
        self.stream.synchronize()

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.float().cpu().numpy()


class TrtRunner(Runner):
    """Runs a serialized engine: one image input, or several named ones (numpy, or torch on its GPU),
    its outputs."""

    def __init__(self, trt: ModuleType, data: bytes, source: str = "engine", device: str = "cuda",
                 io: Any = None, label: str = "TensorRT") -> None:
        self.io = io if io is not None else CudaIO(device)
        torch = self.io.torch
        self.trt = trt
        self.logger = get_logger(trt, label)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise CalibError(f"{label} could not load {source}: {self.logger.first_error or 'see its log above'}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise CalibError(f"{label} could not create an execution context for {source}: "
                             f"{self.logger.first_error or 'see its log above'}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if not inputs or not outputs:
            raise CalibError(f"{source}: expected inputs and at least one output, found "
                             f"{len(inputs)} and {len(outputs)}")
        self.input_names, self.input_name, self.output_names = inputs, inputs[0], outputs
        self.dtypes = {n: torch_dtype(torch, trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        self.input_shape = shape[1:]          # (C, H, W) for time_runner
        if shape[0] >= 0:
            self.batch_range = (shape[0], shape[0])
        else:
            lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (int(lo[0]), int(hi[0]))
        self._outputs: dict[str, Any] = {}

    def infer(self, feed, outputs=None) -> list:
        """The inputs, host (numpy) or device (torch on this engine's GPU): device input gets the
        engine's own output tensors back (reused by the next call), host input host copies. One
        array feeds the first input; a mapping names every input."""
        if not isinstance(feed, dict):
            feed = {self.input_name: feed}
        if set(feed) != set(self.input_names):
            raise CalibError(f"this engine takes the inputs {', '.join(self.input_names)}, got {', '.join(feed)}")
        first = feed[self.input_name]
        on_device = type(first).__module__.startswith("torch") and getattr(first, "is_cuda", False)
        xs = {name: self.io.to_device(feed[name], self.dtypes[name]) for name in self.input_names}
        n = int(xs[self.input_name].shape[0])
        lo, hi = self.batch_range
        if not lo <= n <= hi:
            raise CalibError(f"batch of {n} is outside this engine's batch range {lo}..{hi} (rebuild with "
                             f"--min-batch/--max-batch)")
        for name, x in xs.items():
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise CalibError(f"TensorRT rejected input shape {tuple(x.shape)} for {name}: {self.logger.first_error}")
            self.context.set_tensor_address(name, int(x.data_ptr()))
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            out = self._outputs.get(name)
            if out is None or tuple(out.shape) != shape:
                out = self._outputs[name] = self.io.empty(shape, self.dtypes[name])
            self.context.set_tensor_address(name, int(out.data_ptr()))
        if not self.context.execute_async_v3(self.io.stream_handle()):
            raise CalibError(f"TensorRT inference failed: {self.logger.first_error or 'see its log above'}")
        self.io.synchronize()  # `x` may be freed once we return; the outputs are complete
        names = list(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise CalibError(f"the engine has no output {', '.join(unknown)}")
        return [self._outputs[n] if on_device else self.io.to_numpy(self._outputs[n]) for n in names]

    def close(self) -> None:
        if getattr(self, "io", None) is not None and getattr(self, "context", None) is not None:
            self.io.synchronize()
        self._outputs = {}
        self.context = None
        self.engine = None
        self.runtime = None
