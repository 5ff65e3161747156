"""ONNX Runtime backend: the embedded default (CPU, integer kernels for Q/DQ models), and ONNX
Runtime's CUDA execution provider on a GPU machine. Its sessions, on either, are made by
`calib.onnx_io` (`ort_session`, `cuda_session`: their options, and the `onnxruntime-gpu` package
CUDA needs); this module runs models in them.

On CUDA, `run_device` binds a torch CUDA tensor as the input and torch CUDA tensors as the
outputs with IOBinding (https://onnxruntime.ai/docs/api/python/api_summary.html#iobinding), so
batches decoded on the GPU are never copied to the host. TF32 is off unless asked for (FP32
means FP32); an INT8 model's integer-exact graph (`OrtRunner`) turns it on by itself: on
integer operands it is exact.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib.backends.base import Backend, Runner
from calib.errors import CalibError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from onnx import ModelProto

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


EXACT_SERIALISED_LIMIT = 2 ** 31 - 2 ** 24   # the exact graph is handed to the session serialised


def runs_integer_exact(path: Path, device: str = "cpu") -> bool:
    """Whether `OrtRunner(path, device=device)` runs the model as its integer-exact graph: what a
    report may say about the INT8 figures it shows (the runner's own rule, not the flavor's)."""
    from calib.onnx_io import load_model
    from calib.quantize.exact import runs_exact

    kind = "cpu" if device == "cpu" else "cuda"   # a Placement's device: "cpu" or "cuda:N"
    if not runs_exact(load_model(path, external_data=False), kind):
        return False
    return load_model(path).ByteSize() <= EXACT_SERIALISED_LIMIT


class OrtRunner(Runner):
    """A model in ONNX Runtime. `device="cpu"` is the CPU provider (unchanged default);
    `"cuda"`/`"cuda:N"` the CUDA provider, where `infer` takes torch CUDA tensors without host
    copies (`tf32=True` lets cuDNN/cuBLAS use TF32: faster, no longer strict FP32). `level` and
    `arena` are ONNX Runtime's optimization level and CPU memory arena (`calib.onnx_io.ort_session`:
    "basic" keeps Q/DQ nodes as written; no arena returns memory after each run).

    Q/DQ models that ONNX Runtime only emulates run as their integer-exact graph
    (`calib.quantize.exact`: exact integer sums, float rescale), so every provider computes the
    same bits: on CUDA always (the CUDA provider has no integer kernels), on the CPU for the
    symmetric int8 layout of the tensorrt flavor. The ort flavor (uint8 activations) runs on
    the CPU as written: ONNX Runtime's integer kernels are what it deploys. `exact` forces
    the choice either way. On CUDA the accumulator is also rounded (cuDNN's Winograd or FFT
    algorithms are not exact), and TF32 is switched on when every Conv/Gemm was rewritten:
    it is exact on integer operands."""

    def __init__(self, path: "Path | bytes | ModelProto", threads: int = 0, device: str = "cpu",
                 tf32: bool = False, exact: bool | None = None, level: str = "all", arena: bool = True):
        from calib.onnx_io import cuda_session, ort_session
        from calib.placement import Placement

        placement = Placement.parse(device)
        if placement.several:
            raise CalibError(f"a runner runs on one device, not {device}")
        self.kind = "cuda" if placement.on_gpu else "cpu"
        self.device_id = placement.gpus[0] if placement.on_gpu else 0
        self.exact = None   # the ExactGraph run, when one is
        self._tmp = None    # the temporary folder of a model past 2 GB given as a ModelProto
        model = self._session_model(path, exact)
        if self.exact is not None:
            tf32 = tf32 or (self.kind == "cuda" and self.exact.all_exact)
        self.stream = None   # on CUDA: the torch stream the session runs on (see infer)
        if self.kind == "cpu":
            self.session = ort_session(model, level, threads, arena=arena)
        else:
            self.stream = _own_stream(self.device_id)
            self.session = cuda_session(model, self.device_id, level, tf32=tf32,
                                        stream=None if self.stream is None else self.stream.cuda_stream)
        if self._tmp is not None:
            self._tmp.cleanup()   # the session has read the files
            self._tmp = None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_name = self.input_names[0]
        self._outputs: dict[tuple, list] = {}   # batch shape -> preallocated output tensors

    def _session_model(self, model: "Path | bytes | ModelProto", exact: bool | None):
        """What the session reads: the integer-exact graph where the runner runs one (kept as
        `self.exact`), else the model as given. A ModelProto past protobuf's 2 GB limit is written
        with external data into a temporary folder (`self._tmp`), which ONNX Runtime reads as
        written; a ModelProto under it is read as it is, never serialised and parsed back."""
        from calib.models.files import needs_external_data, save_model
        from calib.onnx_io import load_model
        from calib.quantize.exact import has_qdq, has_subgraphs, integer_exact, runs_exact

        proto = not isinstance(model, (bytes, str, Path))
        if proto and needs_external_data(model):
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="calib-runner-")
            path = Path(self._tmp.name) / "model.onnx"
            save_model(model, path)
            return path
        if exact is False:
            return model
        import onnx

        # The graph first (no external weights): most models are not Q/DQ and are left alone.
        graph = model if proto else (onnx.load_from_string(model) if isinstance(model, bytes)
                                     else load_model(model, external_data=False))
        if not has_qdq(graph) or has_subgraphs(graph):
            return model
        if exact is None and not runs_exact(graph, self.kind):
            return model
        if not proto and not isinstance(model, bytes):
            graph = load_model(model)   # with its external weights
        if graph.ByteSize() > EXACT_SERIALISED_LIMIT:   # it is handed to the session serialised
            return model
        self.exact = integer_exact(graph, round_accumulator=self.kind == "cuda")
        return self.exact.model

    def infer(self, feed, outputs=None) -> list:
        feed = feed if isinstance(feed, dict) else {self.input_name: feed}
        if any(_on_cuda(v) for v in feed.values()):
            return self._infer_device(feed, list(outputs) if outputs is not None else None)
        host = {name: (v.numpy() if type(v).__module__.startswith("torch") else v) for name, v in feed.items()}
        return self.session.run(None if outputs is None else list(outputs), host)

    def _infer_device(self, feed: dict, outputs: list[str] | None) -> list["torch.Tensor"]:
        """Inputs and outputs bound as CUDA tensors with IOBinding: no host copy. The outputs are
        reused by the next call with the same input shapes: clone to keep."""
        import torch

        if self.kind != "cuda":
            raise CalibError("CUDA tensors need a runner on a CUDA device (OrtRunner(..., device='cuda'))")
        feed = {name: v.contiguous() for name, v in feed.items()}
        first = next(iter(feed.values()))
        for name, v in feed.items():
            if v.device.type != "cuda" or v.device.index != self.device_id:
                raise CalibError(f"input {name} is on {v.device}, the model on cuda:{self.device_id}")
        names = outputs or self.output_names
        tensors = self._output_tensors(tuple((n, tuple(v.shape)) for n, v in feed.items()), names)
        binding = self.session.io_binding()
        for name, v in feed.items():
            binding.bind_input(name, "cuda", self.device_id, _numpy_dtype(v.dtype), list(v.shape), v.data_ptr())
        for name, t in zip(names, tensors):
            if t is None:
                binding.bind_output(name, "cuda", self.device_id)
            else:
                binding.bind_output(name, "cuda", self.device_id, _numpy_dtype(t.dtype), list(t.shape),
                                    t.data_ptr())
        current = torch.cuda.current_stream(first.device)
        if self.stream is not None:
            # Ordered on the GPU: the session's stream waits for what the caller queued (the
            # input, its use of the last outputs); afterwards only this stream is waited for
            # (see _own_stream).
            self.stream.wait_stream(current)
            self.session.run_with_iobinding(binding)
            self.stream.synchronize()
        else:
            current.synchronize()
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        if any(t is None for t in tensors):
            values = binding.get_outputs()
            tensors = [t if t is not None else _from_ortvalue(values[i], first.device)
                       for i, t in enumerate(tensors)]
        return tensors

    def _output_tensors(self, shapes: tuple, names: list[str]) -> list:
        key = (shapes, tuple(names))
        found = self._outputs.get(key)
        if found is None:
            import torch

            known = output_shapes(self.session, dict(shapes))
            found = []
            for name in names:
                dims, dtype = known.get(name, (None, None))
                found.append(None if dims is None else
                             torch.empty(dims, dtype=dtype, device=f"cuda:{self.device_id}"))
            self._outputs = {key: found}   # one batch shape at a time (the last batch may differ)
        return found

    def close(self) -> None:
        self._outputs = {}


def _on_cuda(value) -> bool:
    return type(value).__module__.startswith("torch") and bool(getattr(value, "is_cuda", False))


def _own_stream(device_id: int):
    """A torch CUDA stream for a session on `device_id`, or None without torch (the session then
    makes its own, and `run_device`, which needs torch anyway, is not available).

    Why a stream of ours (ONNX Runtime's `user_compute_stream` option): the caller's work on the
    input is then ordered before the run on the GPU, with no host wait, and the run's end is
    this stream's end, so waiting for it waits for nothing else. With ONNX Runtime's own stream
    the only way to know the outputs are written is `IOBinding.synchronize_outputs()`, which is
    `cudaDeviceSynchronize` (CUDAExecutionProvider::Sync): it also waits for the other model's
    batch in flight and for the decoder, so two models in two threads ran in lock step.
    torch hands its streams out from a pool (32 per device and priority): past that many live
    ones, two runners may share a stream, which serialises them again (never a wrong result)."""
    try:
        from calib.placement import require_torch_cuda

        torch, device = require_torch_cuda(f"cuda:{device_id}")
    except CalibError:
        return None
    return torch.cuda.Stream(device=device)


def _numpy_dtype(dtype) -> type:
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
            torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8,
            torch.bool: np.bool_}[dtype]


def _from_ortvalue(value, device) -> "torch.Tensor":
    """An ORT-allocated output as a torch tensor: through DLPack when this ORT has it, else a copy."""
    import torch

    to_dlpack = getattr(value, "to_dlpack", None)
    if to_dlpack is not None:
        try:
            return torch.utils.dlpack.from_dlpack(to_dlpack())
        except Exception:  # pragma: no cover - falls back to the copy below
            pass
    return torch.from_numpy(value.numpy()).to(device)


def output_shapes(session, input_shapes: dict) -> dict:
    """name -> (shape, torch dtype) of each output for the given input shapes (input name ->
    shape), where ORT knows it: symbolic dimensions take the inputs' sizes, an unnamed leading
    dimension the batch; None where a dim is unknown."""
    import torch

    batch = next(iter(input_shapes.values()))[0]
    symbols = {}
    for i in session.get_inputs():
        for d, actual in zip(i.shape, input_shapes.get(i.name, ())):
            if isinstance(d, str):
                symbols[d] = actual
    torch_types = {np.float32: torch.float32, np.float16: torch.float16, np.float64: torch.float64,
                   np.int64: torch.int64, np.int32: torch.int32, np.int8: torch.int8, np.uint8: torch.uint8,
                   np.bool_: torch.bool}
    out = {}
    for o in session.get_outputs():
        np_type = _ORT_TYPES.get(o.type)
        dims = []
        for i, d in enumerate(o.shape or []):
            if isinstance(d, int) and d >= 0:
                dims.append(d)
            elif isinstance(d, str) and d in symbols:
                dims.append(symbols[d])
            elif i == 0 and d is not None and not isinstance(d, int):
                dims.append(batch)   # an unnamed leading dim of an exposed activation: the batch
            else:
                dims = None
                break
        if o.shape is None or not o.shape:
            dims = None
        out[o.name] = (dims, torch_types.get(np_type)) if dims is not None and np_type in torch_types \
            else (None, None)
    return out


class OrtBackend(Backend):
    name = "ort"
    qdq_flavor = "ort"   # uint8 activations, int32 bias: what its integer CPU kernels run fastest

    def build(self, onnx_path: Path, out: Path, precision: str = "fp32", **options) -> Path:
        # ONNX Runtime builds at load time; the artifact is the ONNX file itself.
        if Path(onnx_path).resolve() != Path(out).resolve():
            shutil.copyfile(onnx_path, out)
        return Path(out)

    def load(self, artifact: Path, device: str | None = None, threads: int = 0) -> OrtRunner:
        return OrtRunner(Path(artifact), threads, device or "cpu")

    def load_for_timing(self, artifact: Path, device: str | None = None) -> OrtRunner:
        # Speed is the model as written (what ONNX Runtime deploys), not its integer-exact graph.
        return OrtRunner(Path(artifact), device=device or "cpu", exact=False)


def optimized_op_counts(model_path: Path) -> Counter:
    """Op types in the graph ONNX Runtime actually runs (after its fusions), to check that
    convolutions run as integer kernels (QLinearConv) rather than float Conv."""
    import tempfile

    from calib.onnx_io import load_model, ort_session

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(model_path, "all", optimized_path=optimized)
        graph = load_model(optimized, external_data=False).graph
        return Counter(n.op_type for n in graph.node)
