"""How much memory a run of a model needs, estimated from its graph before any work, against what
the machine has available.

Without it a batch or an input size too large for the machine ends in numpy's out-of-memory
traceback (`calib bench --batch-sizes 100000`), or worse in the kernel's OOM killer with no message
and a `.partial` folder left behind (`--input-size 4000` on a model with dynamic H/W grew to 22 GB).
The estimate is deliberately simple and on the safe side:

- the input images: C x H x W float32 per image, times the batch;
- the activations: every float tensor whose shape ONNX shape inference can tell, for one image
  (the input fixed at (1, C, H, W)), summed, times the batch. ONNX Runtime reuses buffers, so
  inference needs less; the calibration pass holds every quantized tensor of a batch at once,
  which this bounds. Tensors inference cannot size count for nothing ("where known");
- the weights once (initializer sizes from their dims: external data is never read).

What the machine has is psutil's `virtual_memory().available` (memory that can be given to a
process without swapping), read in one function (`available_memory`) so tests can replace it.
On a GPU the activations live in GPU memory: host memory then holds the images and the weights.
A model fed named arrays (`memory_need_arrays`) counts each input's sample in its own dtype where
an image model counts the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from calib.errors import CalibError

if TYPE_CHECKING:  # pragma: no cover
    from calib.data.arrays import ArrayInput

_FLOAT32 = 4
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_FLOATS = {1, 10, 11, 16}


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a model needs: `weights` once, `input` and `activations` per image."""
    weights: int
    input: int
    activations: int

    def total(self, batch: int, activations: bool = True) -> int:
        """Bytes for one batch of `batch` images (`activations=False`: the host's share when the
        model runs on a GPU)."""
        return self.weights + batch * (self.input + (self.activations if activations else 0))

    def largest_batch(self, available: int, activations: bool = True) -> int:
        """The largest batch whose `total` fits in `available` bytes (0 when not even one image)."""
        per_image = self.input + (self.activations if activations else 0)
        return max(0, (available - self.weights) // max(per_image, 1))


def available_memory() -> int:
    """Bytes this machine can give a process now without swapping (psutil's `available`): the one
    place the memory checks read it, so that tests can replace it."""
    import psutil

    return int(psutil.virtual_memory().available)


def memory_need(proto, chw: tuple[int, int, int]) -> MemoryNeed:
    """The estimate of the module docstring for `proto` (its structure is enough: external data
    need not be loaded) run on (C, H, W) images; `proto` itself is not changed."""
    from calib.models.structure import skeleton

    light = skeleton(proto)
    inits = {t.name for t in light.graph.initializer}
    weights = sum(_tensor_bytes(t.dims, t.data_type) for t in light.graph.initializer)
    image = next((i for i in light.graph.input if i.name not in inits), None)
    per_input = chw[0] * chw[1] * chw[2] * _FLOAT32
    if image is None:
        return MemoryNeed(weights, per_input, 0)
    dims = image.type.tensor_type.shape.dim
    if len(dims) == 4:
        for d, v in zip(dims, (1, *chw)):
            d.Clear()
            d.dim_value = v
    return MemoryNeed(weights, per_input, _activations(light, inits | {image.name}))


def memory_need_arrays(proto, inputs: Sequence[ArrayInput]) -> MemoryNeed:
    """The estimate for a model fed named arrays: `inputs` (calib.data.arrays.ArrayInput) give each
    input's dtype and one sample's dimensions; `input` is one sample of all of them."""
    import numpy as np

    from calib.models.structure import skeleton

    light = skeleton(proto)
    inits = {t.name for t in light.graph.initializer}
    weights = sum(_tensor_bytes(t.dims, t.data_type) for t in light.graph.initializer)
    specs = {i.name: i for i in inputs}
    per_input = sum(int(np.prod(i.shape, dtype=np.int64)) * np.dtype(i.dtype).itemsize for i in inputs)
    fed = set()
    for vi in light.graph.input:
        spec = specs.get(vi.name)
        if spec is None or vi.name in inits:
            continue
        t = vi.type.tensor_type
        t.ClearField("shape")
        for v in (1, *spec.shape):
            t.shape.dim.add().dim_value = v
        fed.add(vi.name)
    return MemoryNeed(weights, per_input, _activations(light, inits | fed))


def _activations(light, seen: set[str]) -> int:
    """Bytes of every float tensor shape inference can size in `light` (inputs fixed at one sample)."""
    import onnx

    del light.graph.value_info[:]
    for o in light.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # a graph inference cannot read: the inputs and weights alone
        return 0
    activations = 0
    seen = set(seen)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if vi.name in seen or t.elem_type not in _FLOATS or not t.HasField("shape"):
            continue
        seen.add(vi.name)
        sizes = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        if all(s > 0 for s in sizes):
            activations += _tensor_bytes(sizes, t.elem_type)
    return activations


def _tensor_bytes(dims, elem: int) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 0)
    return n * _ELEM_BYTES.get(elem, 4)


def gb(n: int) -> str:
    """Bytes as a person reads them in one line."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(need: MemoryNeed, batch: int, what: str, *, activations: bool = True,
                 available: int | None = None) -> None:
    """Refuse in one line, before any work, a batch of `batch` images that needs more memory than
    the machine has (`available`: bytes, read from psutil when None), saying what would fit."""
    have = available_memory() if available is None else available
    total = need.total(batch, activations)
    if total <= have:
        return
    raise CalibError(f"{what} needs about {gb(total)} of memory ({_breakdown(need, batch, activations)}) but "
                     f"{gb(have)} is available: {_advice(need, have, activations)}")


def fit_batch(need: MemoryNeed, batch: int, what: str, *, activations: bool = True,
              available: int | None = None) -> tuple[int, str | None]:
    """(the batch to run, a one-line note or None): `batch` when it fits, else the largest batch
    that does (the results of calib's passes do not depend on the batch size, only their speed);
    a CalibError when not even one image fits."""
    have = available_memory() if available is None else available
    total = need.total(batch, activations)
    if total <= have:
        return batch, None
    fits = min(need.largest_batch(have, activations), batch)
    if fits < 1:
        raise CalibError(f"{what} needs about {gb(need.total(1, activations))} of memory for even one image "
                         f"({_breakdown(need, 1, activations)}) but {gb(have)} is available: "
                         f"{_advice(need, have, activations)}")
    return fits, (f"{what}: a batch of {batch} needs about {gb(total)} of memory but {gb(have)} is available; "
                  f"running batches of {fits}")


def _breakdown(need: MemoryNeed, batch: int, activations: bool) -> str:
    parts = [f"{gb(batch * need.input)} of images"]
    if activations and need.activations:
        parts.append(f"{gb(batch * need.activations)} of activations")
    if need.weights:
        parts.append(f"{gb(need.weights)} of weights")
    return f"batch {batch}: " + ", ".join(parts)


def _advice(need: MemoryNeed, have: int, activations: bool) -> str:
    fits = need.largest_batch(have, activations)
    if fits >= 1:
        return f"use a batch of at most {fits}"
    return "use a smaller --input-size, or a machine with more memory"
