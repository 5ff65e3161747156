"""Which CUDA GPU is here, seen through PyTorch (which holds calib's engine I/O buffers), and
whether a TensorRT product can execute engines on it.

TensorRT runs on any NVIDIA GPU with a CUDA driver. TensorRT-RTX runs only on the compute
capabilities it targets (its ComputeCapability enum: 7.5, 8.0, 8.6, 8.9, 12.0, 12.1 in 1.7, of which
calib builds for 8.6, 8.9 and 12.0); it does not run on 9.0 (H100/H200), and an engine built for
explicit targets runs only on those
(https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/cpu-engines.html,
https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/getting-started/support-matrix.html).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]   # (major, minor): (8, 9) for an RTX 4090, (9, 0) for an H200

    @property
    def sm(self) -> int:
        """The capability as TensorRT-RTX's SMxy number: (8, 9) -> 89, (12, 0) -> 120."""
        return self.capability[0] * 10 + self.capability[1]

    @property
    def label(self) -> str:
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]})"


def sm_text(sm: int) -> str:
    return f"{sm // 10}.{sm % 10}"


def find_gpu(device: str = "cuda") -> Gpu | str:
    """The CUDA device PyTorch sees, or one line saying why there is none."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (calib runs engines through PyTorch's CUDA buffers)"
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU build and there is no CUDA GPU to use"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU here"
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"engines run on a CUDA device, not '{device}'"
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return Gpu(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)))


def tensorrt_run_problem(gpu: Gpu | str, product: str) -> str | None:
    if isinstance(gpu, str):
        return f"{product} engines run only on an NVIDIA GPU: {gpu} (use --backend ort on CPU)"
    return None


def rtx_run_problem(gpu: Gpu | str, product: str, targets: tuple[int, ...]) -> str | None:
    """Why `product` (TensorRT-RTX) cannot run engines on `gpu`, or None."""
    runs_on = ", ".join(sm_text(t) for t in targets)
    if isinstance(gpu, str):
        return (f"{product} engines run only on an RTX-class NVIDIA GPU (compute capability {runs_on}): "
                f"{gpu}; engines can still be built here (calib build --backend tensorrt-rtx)")
    if gpu.sm not in targets:
        return (f"{product} does not run on {gpu.label}: it runs on compute capability {runs_on}; "
                f"build the engine here and run it on an RTX GPU")
    return None
