"""Where work runs: the CPU, one GPU, several GPUs of one host, or one device in each process of
a torchrun job, as one value parsed once.

`--device` used to travel as a tuple of strings that a dozen places compared with `("cpu",)` and
three places parsed. A `Placement` is parsed once from the option and then asked (`on_gpu`,
`several`, `shards()`): the device is a setting handed to the one session factory and the one
pass (`calib.passes`), as ONNX Runtime's quantization tools and ModelOpt hand an execution
provider to one session factory, not a separate code path. Everything about where work runs is
decided here, from the option's text and the names it depends on (the backend, the decoder): what
`auto` becomes (`resolve_placement`, probing torch and ONNX Runtime's CUDA provider through
`calib.onnx_io`), and whether the placement can run here at all (`check_placement`), so that a
command hands its options down once and gets a usable `Placement` back.

Under `torchrun` (`Launch`: the environment variables torchrun sets for each process it starts,
https://pytorch.org/docs/stable/elastic/run.html#environment-variables) every process takes one
device: the CPU with `--device cpu`, GPU `LOCAL_RANK` with `--device cuda`, as torchrun's
documentation assigns them; the passes are then shared by the `world` processes
(`calib.passes.distributed`). Reading the variables needs no torch, so it lives here.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, replace
from typing import Mapping

from calib.errors import CalibError, MissingDependency, Note

# What torchrun sets for every process it starts; all of them mean "this is a torchrun job".
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job: its rank among `world` processes, and its rank and
    process count on its own host (`local_rank`, `local_world`)."""

    rank: int
    world: int
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Launch | None":
        """The job torchrun started this process in, or None: not under torchrun (one of
        LAUNCH_VARIABLES missing), or a job of one process, which is a single process."""
        env = os.environ if environ is None else environ
        if not all(env.get(name) for name in LAUNCH_VARIABLES):
            return None
        numbers = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            text = env.get(name, str(numbers["LOCAL_RANK"] + 1) if name == "LOCAL_WORLD_SIZE" else "")
            if not text.strip().isdigit():
                raise CalibError(f"{name}={text!r} is not a process count or rank: calib reads torchrun's "
                                 f"{', '.join(LAUNCH_VARIABLES)} (start it with torchrun)")
            numbers[name] = int(text)
        launch = cls(numbers["RANK"], numbers["WORLD_SIZE"], numbers["LOCAL_RANK"], numbers["LOCAL_WORLD_SIZE"])
        if launch.rank >= launch.world or launch.local_rank >= launch.local_world:
            raise CalibError(f"rank {launch.rank} (local {launch.local_rank}) is outside a job of {launch.world} "
                             f"processes ({launch.local_world} on this host): calib reads torchrun's variables")
        return launch if launch.world > 1 else None


@dataclass(frozen=True)
class Placement:
    """The CPU (`gpus == ()`) or CUDA devices `gpus` (indices), in the order given; `world`: the
    processes of the torchrun job this one is rank 0 of (1: no job), each on one such device."""

    gpus: tuple[int, ...] = ()
    world: int = 1

    @classmethod
    def parse(cls, spec: str | None, launch: Launch | None = None) -> "Placement":
        """"cpu" (or empty); "cuda" (GPU 0); "cuda:N"; "cuda:0,1" (several GPUs of this host).
        `auto` is not parsed here (see the module docstring). Under torchrun (`launch`), "cpu" or
        "cuda": each process takes the CPU or its GPU LOCAL_RANK."""
        text = (spec or "cpu").strip().lower()
        if launch is not None and text not in ("cpu", "cuda"):
            raise CalibError(f"--device {spec} under torchrun: each of its processes takes one device, "
                             f"so use --device cuda (GPU LOCAL_RANK each) or --device cpu")
        if text == "cpu":
            return CPU.within(launch)
        kind, _, rest = text.partition(":")
        if kind != "cuda":
            raise CalibError(f"unknown device '{spec}' (use cpu, cuda, cuda:N, cuda:0,1 or auto)")
        if not rest:
            return cls((0,)).within(launch)
        ids = [p.strip() for p in rest.split(",")]
        if not all(p.isdigit() for p in ids) or len(set(ids)) != len(ids):
            raise CalibError(f"bad GPU list '{spec}': expected distinct indices, e.g. cuda:0,1")
        return cls(tuple(int(p) for p in ids))

    def within(self, launch: Launch | None) -> "Placement":
        """This placement for rank 0 of the torchrun job `launch` (None: unchanged): the CPU, or
        one GPU, the one numbered LOCAL_RANK."""
        if launch is None:
            return self
        if len(self.gpus) > 1:
            raise CalibError(f"--device {self} under torchrun: each of its processes takes one device "
                             f"(use --device cuda)")
        return replace(self, gpus=(launch.local_rank,) if self.gpus else (), world=launch.world)

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def several(self) -> bool:
        """Several GPUs of this host, driven from this process (`calib.passes.shard`)."""
        return len(self.gpus) > 1

    @property
    def sharded(self) -> bool:
        """The passes are shared out: several GPUs of this host, or the processes of a torchrun
        job (this one their rank 0)."""
        return self.several or self.world > 1

    @property
    def devices(self) -> tuple[str, ...]:
        """Device names as torch and calib's runners take them: ("cpu",) or ("cuda:0", ...)."""
        return tuple(f"cuda:{i}" for i in self.gpus) or ("cpu",)

    @property
    def first(self) -> str:
        """The device one model runs on (speed figures, a build's check): what a deployment uses."""
        return self.devices[0]

    def __str__(self) -> str:
        if self.world > 1:
            return f"torchrun: {self.world} processes, {'a GPU (cuda:LOCAL_RANK)' if self.on_gpu else 'the CPU'} each"
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


def auto_placement(backend: str = "ort") -> tuple[Placement, str]:
    """Where `--device auto` runs for `backend`, and why, in words: a fallback to the CPU used to be
    silent, so a user who expected the GPU learnt it from the timings (check_placement says it)."""
    if backend != "ort":
        return CPU, f"--backend {backend} runs its engines on the GPU by itself"
    try:
        import torch
    except ImportError:
        return CPU, "torch is not importable"
    try:
        if not torch.cuda.is_available():
            return CPU, "torch sees no CUDA GPU"
        from calib.onnx_io import require_cuda_provider

        require_cuda_provider()
    except Exception as e:  # no CUDA provider (or a broken CUDA setup): auto means the CPU
        return CPU, f"ONNX Runtime cannot use the GPU: {' '.join(str(e).split())}"
    return Placement((0,)), "torch sees a CUDA GPU and ONNX Runtime has its CUDA provider"


def resolve_placement(spec: str | None, backend: str = "ort", launch: Launch | None = None) -> Placement:
    """`Placement.parse`, and "auto": the first GPU when torch sees one and ONNX Runtime has its
    CUDA provider (for the ort backend, whose CUDA provider runs there; TensorRT runs on its own),
    else the CPU; under torchrun (`launch`), this process's device in the job."""
    if (spec or "cpu").strip().lower() == "auto":
        return auto_placement(backend)[0].within(launch)
    return Placement.parse(spec, launch)


def check_placement(spec: str | None, backend: str = "ort", decoder: str = "nvjpeg",
                    passes: bool = True) -> Placement:
    """The placement of `--device spec` under this process's torchrun job (if any), usable here: a
    GPU run needs torch with CUDA and ONNX Runtime's CUDA provider (calib[gpu]) where ONNX Runtime
    runs there (the ort backend; with `passes`, the calibration pass); a TensorRT backend then
    evaluates on the same GPU batches, and several GPUs shard ONNX Runtime's passes only. `auto`
    says where it went and why (a `Note`). `decoder`: how images reach the GPU (--gpu-decode)."""
    launch = Launch.from_env()
    if (spec or "").strip().lower() == "auto":
        found, why = auto_placement(backend)
        placement = found.within(launch)
        warnings.warn(f"--device auto runs on {'the CPU' if not found.on_gpu else found.first}: {why}", Note,
                      stacklevel=2)
    else:
        placement = Placement.parse(spec, launch)
    if placement.world > 1 and backend != "ort":
        raise CalibError(f"under torchrun the processes share ONNX Runtime's passes: use --backend ort, or run "
                         f"--backend {backend} as one process")
    if not placement.on_gpu:
        return placement
    if placement.several and backend != "ort":
        raise CalibError(f"--device {spec} shards ONNX Runtime's CUDA provider over several GPUs: use it "
                         f"with --backend ort, or one GPU (--device cuda:N) with --backend {backend}")
    if decoder == "pil" and not sys.platform.startswith("linux"):
        raise CalibError("--gpu-decode pil decodes in forked worker processes, which needs Linux; use --gpu-decode nvjpeg")
    from calib.onnx_io import require_cuda_provider

    if passes or backend == "ort":
        require_cuda_provider()   # first: without calib[gpu] nothing else matters
    for device in placement.devices:
        require_torch_cuda(device)
    return placement
