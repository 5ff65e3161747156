"""Small detection and segmentation models in plain torch, exported by torch's legacy exporter
(dynamo=False, opset 17), for the head placement tests (calib.quantize.heads).

- `YoloHead`: YOLOv8's anchor-free head at small widths: two levels, per level a box branch
  (-> 4 x reg_max DFL logits) and a score branch (-> C logits), concatenated per level, flattened
  over anchors and concatenated; Split into box and score; the DFL (Softmax over the bins, then a
  16 -> 1 convolution weighted by the bin index); box arithmetic against constant anchor points
  and strides; Sigmoid scores; Concat of boxes and scores, then a shape op to the single
  (N, 4 + C, A) output (the issue's "flattened to one output" case).
- `SsdHead`: SSD/RetinaNet's two outputs: per level a box and a score convolution, permuted and
  reshaped to (N, anchors, 4) / (N, anchors, C) and concatenated over levels.
- `SegHead`: a convolution to class logits and a bilinear Resize to the input size.
Random seeded weights; the backbones are a few strided convolutions with SiLU/ReLU.

Also the issue's top-k check, shared by test_heads.py (this YoloHead on noise) and
tests/corpus/test_task_corpus.py (a YOLOv8-style detector on real images): minmax ranges of every
float activation, the three placements (default, convolutions only, head quantized) and the
overlap of INT8's most confident anchors with FP32's.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

SIZE = 64


def _conv(cin: int, cout: int, k: int = 3, s: int = 1, act=nn.SiLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), act())


class YoloHead(nn.Module):
    def __init__(self, classes: int = 20, reg_max: int = 16, width: int = 32):
        super().__init__()
        self.classes, self.reg_max = classes, reg_max
        self.stem = nn.Sequential(_conv(3, 16, 3, 2), _conv(16, width, 3, 2))          # stride 4
        self.down = _conv(width, width, 3, 2)                                            # stride 8
        self.cv2 = nn.ModuleList(nn.Sequential(_conv(width, width), nn.Conv2d(width, 4 * reg_max, 1)) for _ in range(2))
        self.cv3 = nn.ModuleList(nn.Sequential(_conv(width, width), nn.Conv2d(width, classes, 1)) for _ in range(2))
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False)
        with torch.no_grad():
            self.dfl.weight.copy_(torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))
        points, strides = [], []
        for stride in (4, 8):
            n = SIZE // stride
            ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            points.append(torch.stack((xs.flatten(), ys.flatten())))
            strides.append(torch.full((1, n * n), float(stride)))
        self.register_buffer("anchors", torch.cat(points, 1).unsqueeze(0))   # (1, 2, A)
        self.register_buffer("strides", torch.cat(strides, 1).unsqueeze(0))  # (1, 1, A)

    def forward(self, x):
        p3 = self.stem(x)
        feats = [p3, self.down(p3)]
        b = x.shape[0]
        no = 4 * self.reg_max + self.classes
        out = torch.cat([torch.cat((self.cv2[i](f), self.cv3[i](f)), 1).view(b, no, -1) for i, f in enumerate(feats)], 2)
        box, cls = out.split((4 * self.reg_max, self.classes), 1)
        a = box.shape[2]
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        y = torch.cat((dbox, cls.sigmoid()), 1)
        return y.unsqueeze(-1).flatten(2)   # (N, 4 + C, A) through a shape op, as users flatten it


class SsdHead(nn.Module):
    def __init__(self, classes: int = 5, anchors: int = 4, width: int = 32):
        super().__init__()
        self.classes = classes
        self.stem = nn.Sequential(_conv(3, 16, 3, 2, nn.ReLU), _conv(16, width, 3, 2, nn.ReLU))
        self.down = _conv(width, width, 3, 2, nn.ReLU)
        self.box = nn.ModuleList(nn.Conv2d(width, anchors * 4, 3, 1, 1) for _ in range(2))
        self.cls = nn.ModuleList(nn.Conv2d(width, anchors * classes, 3, 1, 1) for _ in range(2))

    def forward(self, x):
        p3 = self.stem(x)
        feats = [p3, self.down(p3)]
        b = x.shape[0]
        boxes = torch.cat([self.box[i](f).permute(0, 2, 3, 1).reshape(b, -1, 4) for i, f in enumerate(feats)], 1)
        scores = torch.cat([self.cls[i](f).permute(0, 2, 3, 1).reshape(b, -1, self.classes) for i, f in enumerate(feats)], 1)
        return boxes, scores


class SegHead(nn.Module):
    def __init__(self, classes: int = 21, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(_conv(3, 16, 3, 2, nn.ReLU), _conv(16, width, 3, 2, nn.ReLU), _conv(width, width, 3, 1, nn.ReLU))
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.body(x)), size=x.shape[2:], mode="bilinear", align_corners=False)


def export(module: nn.Module, outputs: tuple[str, ...] = ("out",), seed: int = 0) -> onnx.ModelProto:
    """`module` (weights as built under `seed`) exported by the legacy exporter, dynamic batch."""
    module.eval()
    buf = io.BytesIO()
    axes = {"images": {0: "N"}, **{o: {0: "N"} for o in outputs}}
    with torch.no_grad():
        torch.onnx.export(module, torch.zeros(1, 3, SIZE, SIZE), buf, input_names=["images"], output_names=list(outputs),
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def build(cls, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- the top-k check
KS = (10, 20, 50, 100)
PLACEMENTS = ("default", "convs only", "head quantized")


def minmax_ranges(model: onnx.ModelProto, batch: np.ndarray, batches: int = 4) -> dict[str, float]:
    """minmax ranges of every float activation (calib.calibrators), run by ONNX Runtime on `batch`
    in `batches` parts."""
    from calib.backends.ort import OrtRunner
    from calib.calibrators import get_calibrator
    from calib.passes import expose

    exposed, names = expose(model)
    runner = OrtRunner(exposed)
    cal = get_calibrator("minmax")
    for x in np.array_split(batch, batches):
        for name, value in zip(names, runner.infer(x, names)):
            cal.observe(name, value)
    return {name: r.amax for name, r in cal.compute().items()}


def predict(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """Every output of `model` on `x`, by ONNX Runtime."""
    from calib.backends.ort import OrtRunner

    runner = OrtRunner(model)
    try:
        return runner.infer(x)
    finally:
        runner.close()


def anchor_scores(outputs: list[np.ndarray]) -> np.ndarray:
    """Each anchor's best class score (N, A): from ultralytics' one output (N, 4 + C, A), or from the
    scores (N, A, C) that follow the boxes in SSD's two outputs."""
    return outputs[0][:, 4:].max(1) if len(outputs) == 1 else outputs[1].max(2)


def topk_overlap(reference: np.ndarray, got: np.ndarray, k: int) -> float:
    """Mean over images of |top-k anchors by score, FP32 ∩ INT8| / k; scores (N, A)."""
    return float(np.mean([len(set(np.argsort(-r)[:k]) & set(np.argsort(-g)[:k])) / k for r, g in zip(reference, got)]))


def head_quantized(flavor: str, tensor: str):
    """The old behaviour, forced in both flavors: the placement without the head analysis, and
    the box+score Concat's output quantized for every reader."""
    from calib.quantize import get_flavor

    base = type(get_flavor(flavor))

    class HeadQuantized(base):
        def place(self, plan, original):
            super().place(plan, original)
            plan.require(tensor, None, all_readers=True)

    return HeadQuantized()


def through_identity(model: onnx.ModelProto, output: str) -> tuple[onnx.ModelProto, str]:
    """A copy of `model` whose graph output `output` is written by an Identity reading what its
    producer now writes under another name (returned): ultralytics' export ends in the box+score
    Concat itself, and a Q/DQ on a graph output has no reader to take its dequantized value."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inner = f"{output}/concat"
    producer = next(n for n in model.graph.node if output in n.output)
    producer.output[list(producer.output).index(output)] = inner
    model.graph.node.append(onnx.helper.make_node("Identity", [inner], [output], name=f"{output}/identity"))
    return model, inner


def placements(model: onnx.ModelProto, amax: dict[str, float], flavor: str, concat: str) -> dict[str, onnx.ModelProto]:
    """The three placements of the issue's test, from the same ranges: the default (heads float), only
    the convolutions quantized (no head analysis: every Conv, the DFL's and the predictions' included,
    and nothing else), and the head quantized (no head analysis, and `concat` quantized: YOLO's
    box+score Concat under one scale over pixels and scores, as the old ort placement had it; an SSD's
    scores output)."""
    import warnings

    from calib.quantize import quantize_model

    conv_only = sorted({n.op_type for n in model.graph.node} - {"Conv"})
    with warnings.catch_warnings():   # an op type the flavor's rewrite removed (the ort flavor's folded Clip)
        warnings.filterwarnings("ignore", "--exclude-op .* matches no node")
        convs, _ = quantize_model(model, amax, flavor, protect_heads=False, exclude_ops=conv_only)
    if concat in {o.name for o in model.graph.output}:
        head_model, head_tensor = through_identity(model, concat)
        head_amax = {**amax, head_tensor: amax[concat]}
    else:
        head_model, head_tensor, head_amax = model, concat, amax
    return {
        "default": quantize_model(model, amax, flavor)[0],
        "convs only": convs,
        "head quantized": quantize_model(head_model, head_amax, head_quantized(flavor, head_tensor),
                                         protect_heads=False)[0],
    }


def topk_overlaps(model: onnx.ModelProto, qdq: dict[str, onnx.ModelProto], x: np.ndarray) -> dict[str, list[float]]:
    """Per placement of `qdq` (name -> Q/DQ model of `model`), the top-k overlap with FP32 on `x`,
    for k in KS."""
    fp32 = anchor_scores(predict(model, x))
    return {name: [topk_overlap(fp32, anchor_scores(predict(q, x)), k) for k in KS] for name, q in qdq.items()}
