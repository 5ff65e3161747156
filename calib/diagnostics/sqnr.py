"""Per-tensor SQNR of Q/DQ models against FP32 (the measure itself: calib.stats.sqnr), and the
models that expose the tensors to compare."""

from __future__ import annotations

import onnx

from calib.data import Dataset
from calib.quantize.naming import dequantized_name, float_name


def int8_view(qdq: onnx.ModelProto, tensors: list[str]) -> dict[str, str]:
    """For each FP32 activation tensor, the Q/DQ-model tensor to compare it with.

    We compare the DequantizeLinear output (what the consumers of the tensor actually read in
    INT8: it includes this tensor's own rounding and clipping at the calibrated threshold, so a
    threshold chosen too low or too high shows up right here) where the tensor is quantized, and
    the tensor of the same name otherwise. The float tensor of the same name in the Q/DQ model is
    *not* used for quantized tensors: with ReLU folded into a uint8 quantization (ort flavor)
    it is the pre-ReLU Conv output, which differs from the FP32 tensor of that name by design;
    when such a tensor is not quantized at all (its readers were left in float by a fallback),
    we compare `<tensor>_float`, the ReLU output those float readers read.
    """
    produced = {o for n in qdq.graph.node for o in n.output} | {i.name for i in qdq.graph.input}
    view = {}
    for t in tensors:
        for candidate in (dequantized_name(t), float_name(t), t):
            if candidate in produced:
                view[t] = candidate
                break
    return view


def activation_sqnr(prepared: onnx.ModelProto, qdq_models: dict[str, onnx.ModelProto], dataset: Dataset,
                    tensors: list[str], batch_size: int = 4, workers: int | None = None,
                    progress: str | None = None, device: str = "cpu",
                    decoder: str = "nvjpeg") -> dict[str, dict[str, float]]:
    """Per-tensor SQNR (dB) of each INT8 model against FP32 on `dataset` (decoded once for all,
    on `device`).

    The same tensors are exposed in the FP32 model and in each Q/DQ model; in the Q/DQ model we
    read each tensor's DequantizeLinear output (see `int8_view` above). The Q/DQ models run
    under ORT_ENABLE_BASIC and as written (not their integer-exact graph) so the Q/DQ nodes stay
    as written (simulated INT8, no fusion). The logits (the model output) are included under
    their own name. One Q/DQ model at a time, without memory arenas, `batch_size` images per run:
    peak memory stays ~2 x batch_size x the activations of one image.
    """
    from calib.backends.ort import OrtRunner
    from calib.passes import expose, load_images, walk
    from calib.passes.consumers import Sqnr

    logits = prepared.graph.output[0].name
    names = [t for t in tensors if t != logits] + [logits]
    images = load_images(dataset, batch_size, workers, progress, device, decoder)
    exposed, _ = expose(prepared, names)
    fp32 = OrtRunner(exposed, device=device, arena=False, exact=False)
    out = {}
    for cal, q in qdq_models.items():
        view = int8_view(q, names)
        view[logits] = q.graph.output[0].name
        wanted = [t for t in names if t in view]
        exposed_q, _ = expose(q, [view[t] for t in wanted])
        int8 = OrtRunner(exposed_q, device=device, level="basic", arena=False, exact=False)
        sqnr = Sqnr({t: view[t] for t in wanted})
        walk(images.batches(batch_size), {"fp32": fp32, "int8": int8}, [sqnr],
             outputs={"fp32": names, "int8": [view[t] for t in wanted]})
        out[cal] = sqnr.result()
        del int8
    return out
