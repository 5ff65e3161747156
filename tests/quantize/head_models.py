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
"""

from __future__ import annotations

import io

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
