"""Where work runs: the CPU, one GPU, or several GPUs of one host, as one value parsed once.

`--device` used to travel as a tuple of strings that a dozen places compared with `("cpu",)` and
three places parsed. A `Placement` is parsed once from the option and then asked (`on_gpu`,
`several`, `shards()`): the device is a setting handed to the one session factory and the one
pass (`calib.passes`), as ONNX Runtime's quantization tools and ModelOpt hand an execution
provider to one session factory, not a separate code path. Resolving `auto` needs to probe torch
and ONNX Runtime, so it lives with the backend that probes (`calib.backends.ort.resolve_placement`).
"""

from __future__ import annotations

from dataclasses import dataclass

from calib.errors import CalibError, MissingDependency


@dataclass(frozen=True)
class Placement:
    """The CPU (`gpus == ()`) or CUDA devices `gpus` (indices), in the order given."""

    gpus: tuple[int, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> "Placement":
        """"cpu" (or empty); "cuda" (GPU 0); "cuda:N"; "cuda:0,1" (several GPUs of this host).
        `auto` is not parsed here (see the module docstring)."""
        text = (spec or "cpu").strip().lower()
        if text == "cpu":
            return CPU
        kind, _, rest = text.partition(":")
        if kind != "cuda":
            raise CalibError(f"unknown device '{spec}' (use cpu, cuda, cuda:N, cuda:0,1 or auto)")
        if not rest:
            return cls((0,))
        ids = [p.strip() for p in rest.split(",")]
        if not all(p.isdigit() for p in ids) or len(set(ids)) != len(ids):
            raise CalibError(f"bad GPU list '{spec}': expected distinct indices, e.g. cuda:0,1")
        return cls(tuple(int(p) for p in ids))

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def several(self) -> bool:
        return len(self.gpus) > 1

    @property
    def devices(self) -> tuple[str, ...]:
        """Device names as torch and calib's runners take them: ("cpu",) or ("cuda:0", ...)."""
        return tuple(f"cuda:{i}" for i in self.gpus) or ("cpu",)

    @property
    def first(self) -> str:
        """The device one model runs on (speed figures, a build's check): what a deployment uses."""
        return self.devices[0]

    def __str__(self) -> str:
        return ",".join(self.devices)


CPU = Placement()


def require_torch_cuda(device: str):
    """(torch, the torch.device) for `device`, or a one-line error saying why not: what every GPU
    path needs first (the placement check, the batch stream, nvJPEG decoding, the runners' device
    buffers)."""
    try:
        import torch
    except ImportError:
        raise MissingDependency("torch", "GPU batch streaming") from None
    dev = torch.device(device)
    if dev.type != "cuda":
        raise CalibError(f"GPU batch streaming needs a CUDA device, not '{device}' "
                         f"(for CPU batches use calib.data.loader.iter_batches)")
    if not torch.cuda.is_available():
        raise CalibError(f"GPU batch streaming needs an NVIDIA GPU with CUDA, and torch {torch.__version__} "
                         f"sees none (for CPU batches use calib.data.loader.iter_batches)")
    if dev.index is None:  # "cuda": the current device, named by its index (set_device needs one)
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise CalibError(f"there is no GPU {device}: torch sees {torch.cuda.device_count()} "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch, dev
