"""Stand-ins for the TensorRT Python API, and small models, shared by the tests in this folder.

`FakeTrt` offers only the documented names calib uses, shaped by the features it is given
(TensorRT 8-, 10- or 11-like), and records what calib asked for: it checks calib's own
orchestration (flags, profiles, files), not what TensorRT does with them. Its engines compute
known logits from the bound input address, so a runner that returns anything else (zeros, a
stale buffer) fails. `HostIO` stands in for the runner's CUDA I/O with host memory.
"""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.conftest import make_classifier

CLASSES = 10
SIZE = 16
INPUT = "input"   # make_classifier's input name


def expected_logits(x: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """What every fake engine computes: per sample, sum(x) * (k + 1) + k for class k."""
    s = x.reshape(x.shape[0], -1).astype(np.float64).sum(1)
    return (s[:, None] * (np.arange(classes) + 1) + np.arange(classes)).astype(np.float32)


def amax_for(model: onnx.ModelProto, flavor: str) -> dict[str, float]:
    """Any positive amax per tensor the flavor quantizes (the mechanics need no real statistics)."""
    from calib.quantize import required_tensors

    return {name: 1.0 + 0.25 * i for i, name in enumerate(required_tensors(model, flavor))}


def qdq_model(folder: Path, flavor: str = "tensorrt", fp32: Path | None = None) -> Path:
    """The `flavor` Q/DQ model of make_classifier, written to `folder`."""
    from calib.quantize import quantize_model

    fp32 = fp32 or make_classifier(folder / "fp32.onnx")
    q, missing = quantize_model(onnx.load(str(fp32)), amax_for(onnx.load(str(fp32)), flavor), flavor)
    assert not missing
    path = folder / f"{flavor}.int8.onnx"
    onnx.save(q, str(path))
    return path


def calibrated_amax(model_path: Path, images: np.ndarray, flavor: str = "tensorrt") -> dict[str, float]:
    """max |x| of every tensor the flavor quantizes, from ONNX Runtime on `images`."""
    import onnxruntime as ort

    from calib.quantize import required_tensors

    model = onnx.load(str(model_path))
    names = required_tensors(model, flavor)
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {session.get_inputs()[0].name: images})
    return {n: max(float(np.abs(v).max()), 1e-6) for n, v in zip(names, values)}


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# -- device memory behind an address --------------------------------------------------------------

def host_array(ptr: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(ptr)).reshape(shape)


class _CudaView:
    def __init__(self, ptr: int, shape: tuple[int, ...]):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (ptr, False),
                                         "version": 2, "strides": None}


class HostIO:
    """The runner's I/O in host memory (torch CPU tensors): what CudaIO does, minus the GPU."""

    def __init__(self):
        import torch

        self.torch = torch
        self.synchronized = 0

    def to_device(self, images, dtype):
        torch = self.torch
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        return x.to(dtype=dtype).contiguous()

    def empty(self, shape, dtype):
        return self.torch.full(shape, float("nan"), dtype=dtype)  # unwritten output shows as NaN

    def stream_handle(self) -> int:
        return 0

    def synchronize(self) -> None:
        self.synchronized += 1

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.float().numpy().copy()


# -- the API stand-in ------------------------------------------------------------------------------

class FakeTrt(types.ModuleType):
    """A `tensorrt`-shaped module. weak_typing: BuilderFlag.FP16/INT8 exist (<= 10);
    calibrators: IBuilderConfig.int8_calibrator and the IInt8 bases exist (<= 10);
    implicit_batch: Builder.max_batch_size exists (<= 8); strongly_typed_flag (>= 9);
    memory: where engines read and write their I/O ('host' or 'cuda')."""

    def __init__(self, version: str = "10.3.0", weak_typing: bool = True, calibrators: bool = True,
                 implicit_batch: bool = False, strongly_typed_flag: bool = True, memory: str = "host",
                 name: str = "tensorrt"):
        super().__init__(name)
        self.__version__ = version
        self.calls: dict = {"builds": 0}
        fake = self

        class Flag:
            def __init__(self, flag_name, value):
                self.name, self.value = flag_name, value

            def __int__(self):
                return self.value

        flags = {"EXPLICIT_BATCH": Flag("EXPLICIT_BATCH", 0)}
        if strongly_typed_flag:
            flags["STRONGLY_TYPED"] = Flag("STRONGLY_TYPED", 1)
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
        builder_flags = {"TF32": "TF32"}
        if weak_typing:
            builder_flags.update(FP16="FP16", INT8="INT8")
        self.BuilderFlag = types.SimpleNamespace(**builder_flags)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.DataType = types.SimpleNamespace(FLOAT="FLOAT")
        self.nptype = lambda dtype: np.float32

        class ILogger:
            Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

            def __init__(self):
                pass

        self.ILogger = ILogger

        class Tensor:
            def __init__(self, tensor_name, shape):
                self.name, self.shape = tensor_name, shape

        class Network:
            def __init__(self, bits):
                fake.calls["network_flags"] = bits
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class ParserError:
            def __init__(self, text):
                self.text = text

            def desc(self):
                return self.text

        class Parser:
            def __init__(self, network, logger):
                self.network, self.logger, self.errors = network, logger, []

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                if fake.calls.get("parser_error"):
                    self.errors.append(ParserError(fake.calls["parser_error"]))
                    return False
                graph = onnx.load(path).graph
                inits = {i.name for i in graph.initializer}
                for i in graph.input:
                    if i.name not in inits:
                        dims = tuple(d.dim_value if d.dim_value else -1 for d in i.type.tensor_type.shape.dim)
                        self.network.inputs.append(Tensor(i.name, dims))
                return True

        class Profile:
            def __init__(self):
                self.shapes = []

            def set_shape(self, tensor_name, lo, opt, hi):
                self.shape = (tensor_name, lo, opt, hi)   # one input: the profile is its shape
                self.shapes.append(self.shape)

        class TimingCache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return memoryview(self.data + b"+tactics")

        class IBuilderConfig:
            def __init__(self):
                self.flags, self.profiles = [], []
                fake.calls["config"] = self

            def set_flag(self, flag):
                self.flags.append(flag)

            def set_memory_pool_limit(self, pool, size):
                self.pool = (pool, size)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shape if len(profile.shapes) == 1 else tuple(profile.shapes))

            def create_timing_cache(self, data):
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.timing_cache = cache
                return True

            def get_timing_cache(self):
                return self.timing_cache

        if calibrators:
            IBuilderConfig.int8_calibrator = None

            def set_calibration_profile(config, profile):
                config.calibration_profile = profile.shape

            IBuilderConfig.set_calibration_profile = set_calibration_profile

            class Base:
                def __init__(self):
                    pass

            for base in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8EntropyCalibrator"):
                setattr(self, base, type(base, (Base,), {}))
        self.IBuilderConfig = IBuilderConfig

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, bits=0):
                return Network(bits)

            def create_builder_config(self):
                return IBuilderConfig()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls["builds"] += 1
                calibrator = getattr(config, "int8_calibrator", None)
                if calibrator is not None and not calibrator.read_calibration_cache():
                    # No cache to take: calibrate from batches, as TensorRT does.
                    fake.calls["calibration_batches"] = []
                    while (batch := calibrator.get_batch([network.get_input(0).name])) is not None:
                        fake.calls["calibration_batches"].append(batch)
                return memoryview(b"ENGINE:" + ",".join(config.flags).encode())

        if implicit_batch:
            Builder.max_batch_size = 1
        self.Builder, self.IBuilderConfig, self.OnnxParser = Builder, IBuilderConfig, Parser

        # -- runtime: engines that compute expected_logits from the bound input address ----------
        view = host_array if memory == "host" else None

        class Context:
            def __init__(self, engine):
                self.engine, self.addresses, self.shape = engine, {}, None

            def set_input_shape(self, tensor_name, shape):
                self.shape = tuple(shape)
                return True

            def get_tensor_shape(self, tensor_name):
                return (self.shape[0], CLASSES)

            def set_tensor_address(self, tensor_name, ptr):
                self.addresses[tensor_name] = ptr

            def execute_async_v3(self, stream):
                fake.calls["executed"] = fake.calls.get("executed", 0) + 1
                out_shape = (self.shape[0], CLASSES)
                if view is not None:
                    x = host_array(self.addresses["images"], self.shape)
                    host_array(self.addresses["logits"], out_shape)[...] = expected_logits(x)
                    return True
                import torch

                x = torch.as_tensor(_CudaView(self.addresses["images"], self.shape), device="cuda")
                out = torch.as_tensor(_CudaView(self.addresses["logits"], out_shape), device="cuda")
                with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                    s = x.reshape(self.shape[0], -1).double().sum(1)
                    k = torch.arange(CLASSES, device="cuda", dtype=torch.float64)
                    out.copy_((s[:, None] * (k + 1) + k).float())
                return True

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ("images", "logits")[i]

            def get_tensor_mode(self, tensor_name):
                return "INPUT" if tensor_name == "images" else "OUTPUT"

            def get_tensor_dtype(self, tensor_name):
                return "FLOAT"

            def get_tensor_shape(self, tensor_name):
                return (-1, 3, 4, 4) if tensor_name == "images" else (-1, CLASSES)

            def get_tensor_profile_shape(self, tensor_name, profile):
                return ((1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))

            def create_execution_context(self):
                return Context(self)

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, data):
                if not bytes(data).startswith(b"ENGINE:"):
                    self.logger.log(ILogger.Severity.ERROR, "engine plan file is corrupted\nmore detail")
                    return None
                return Engine()

        self.Runtime = Runtime


def install(monkeypatch, fake: FakeTrt) -> FakeTrt:
    """Make `import tensorrt` return `fake` for this test."""
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def rtx_backend():
    """The real TensorRT-RTX backend, or a skip saying what to install."""
    from calib.backends import get_backend
    from calib.errors import MissingDependency

    try:
        return get_backend("tensorrt-rtx")
    except MissingDependency as e:
        pytest.skip(f"TensorRT-RTX is not installed here ({e})")
