"""Tiny torch classifiers exported the way NVIDIA's TensorRT walkthroughs export ResNet-50
(`input_names=["input"], output_names=["output"]`, dynamic batch, height and width), with the
legacy exporter and with the dynamo exporter (torch's default since 2.9, weights in a
`model.onnx.data` side file). Seeded, small and fast: only the mechanics of intake count here."""

from __future__ import annotations

import warnings
from pathlib import Path

WALKTHROUGH_AXES = {"input": {0: "batch_size", 2: "height", 3: "width"}}


def _modules():
    import torch
    from torch import nn

    class ConvNet(nn.Module):
        """Conv-BN-ReLU stem, a depthwise residual block, global pooling, a linear head."""

        def __init__(self, classes: int = 10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8),
                                       nn.ReLU(), nn.Conv2d(8, 8, 1))
            self.head = nn.Linear(8, classes)

        def forward(self, x):
            y = self.stem(x)
            y = y + self.block(y)
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    class SqueezeNet(nn.Module):
        """SqueezeNet-style head: a 1x1 conv to classes, then global pooling: output (N, K, 1, 1)."""

        def __init__(self, classes: int = 10):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Conv2d(8, classes, 1)

        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(torch.relu(self.classifier(self.features(x))), 1)

    class ViT(nn.Module):
        """Patch conv, class token, one pre-norm attention block: the shape arithmetic on the
        dynamic batch makes integer Shape/Gather/Concat tensors in the exported graph."""

        def __init__(self, classes: int = 10, dim: int = 16, patch: int = 8, size: int = 32):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, patch, patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), 2
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
            h = self.norm1(t)
            n, tokens, dim = h.shape
            q, k, v = self.qkv(h).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5, dim=-1)
            t = t + self.proj((a @ v).transpose(1, 2).reshape(n, tokens, dim))
            t = t + self.mlp(self.norm2(t))
            return self.head(t[:, 0])

    return {"convnet": ConvNet, "squeezenet": SqueezeNet, "vit": ViT}


# Input side each architecture is exported at; the ViT's position embedding fixes its size.
SIZES = {"convnet": 32, "squeezenet": 32, "vit": 32}


def build(arch: str, classes: int = 10, seed: int = 0):
    """The model in eval mode, seeded; BatchNorm gets non-trivial running statistics."""
    import torch

    torch.manual_seed(seed)
    model = _modules()[arch](classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export(arch: str, path: Path, dynamo: bool, classes: int = 10, dynamic_axes: dict | None = WALKTHROUGH_AXES,
           opset: int | None = None) -> Path:
    """Export like the walkthrough; `dynamo` picks the exporter (dynamo writes `<path>.data`)."""
    import torch

    model = build(arch, classes)
    size = SIZES[arch]
    kwargs = {"opset_version": opset} if opset else {}
    if dynamo:
        kwargs["external_data"] = True  # what torch does by default; said here so it stays so
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes=dynamic_axes, dynamo=dynamo, verbose=False,
                          **kwargs)
    return path
