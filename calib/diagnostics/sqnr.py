"""Per-tensor SQNR of Q/DQ models against FP32 (the measure itself: calib.evaluate.sqnr), and the
models that expose the tensors to compare."""

from __future__ import annotations

import onnx

from calib.data import Dataset
from calib.evaluate.sqnr import SqnrAccumulator
from calib.onnx_io import ort_session
from calib.quantize.naming import dequantized_name, float_name


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the float tensors `names` (added after its own outputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in existing:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            existing.add(name)
    return out


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
                    progress: str | None = None) -> dict[str, dict[str, float]]:
    """Per-tensor SQNR (dB) of each INT8 model against FP32 on `dataset` (decoded once for all).

    The same tensors are exposed in the FP32 model and in each Q/DQ model; in the Q/DQ model we
    read each tensor's DequantizeLinear output (see `int8_view` above). The Q/DQ models run
    under ORT_ENABLE_BASIC so the Q/DQ nodes stay as written (simulated INT8, no fusion). The
    logits (the model output) are included under their own name. One Q/DQ session at a time,
    without memory arenas, `batch_size` images per run: peak memory stays ~2 x batch_size x the
    activations of one image.
    """
    from calib.evaluate.images import load_images

    logits = prepared.graph.output[0].name
    names = [t for t in tensors if t != logits] + [logits]
    images = load_images(dataset, batch_size, workers, progress)
    fp32 = ort_session(with_outputs(prepared, names), "all", arena=False)
    input_name = fp32.get_inputs()[0].name
    out = {}
    for cal, q in qdq_models.items():
        view = int8_view(q, names)
        view[logits] = q.graph.output[0].name
        wanted = [t for t in names if t in view]
        int8 = ort_session(with_outputs(q, [view[t] for t in wanted]), "basic", arena=False)
        acc = SqnrAccumulator()
        for batch in images.batches(batch_size):
            ref = dict(zip(names, fp32.run(names, {input_name: batch})))
            for t, y in zip(wanted, int8.run([view[t] for t in wanted], {input_name: batch})):
                acc.add(t, ref[t], y)
            del ref
        out[cal] = acc.result()
        del int8
    return out
