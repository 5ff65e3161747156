"""Ten small image classifiers in plain torch, one per architecture family users bring.

Each keeps the structures that decide Q/DQ placement (see docs/quantization.md) at small widths
and a 64x64 input: residual Adds (with and without a projection shortcut), depthwise and grouped
convolutions, SE gates (Sigmoid and HardSigmoid), Hardswish/SiLU/GELU, Concat, MaxPool,
LayerNorm (channels-last and token), attention with two activation inputs to MatMul, windowed
attention with an int64 relative-position index, and an (N, K, 1, 1) output. torchvision does not
import with the CPU torch here, so the blocks are written out (after the torchvision/timm designs
they are named for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 16


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, act=None))
        self.down = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                    BasicBlock(32, 32, 1))
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


# ----------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, act=nn.ReLU6, se: type | None = None, k: int = 3):
        super().__init__()
        mid = cin * expand
        layers = [conv_bn(cin, mid, 1, act=act)] if expand != 1 else []
        layers.append(conv_bn(mid, mid, k, stride, groups=mid, act=act))
        if se is not None:
            layers.append(se(mid))
        layers.append(conv_bn(mid, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.ReLU6), InvertedResidual(16, 8, 1, 1), InvertedResidual(8, 12, 2, 4),
            InvertedResidual(12, 12, 1, 4), InvertedResidual(12, 16, 2, 4), InvertedResidual(16, 16, 1, 4),
            conv_bn(16, 64, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, CLASSES))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ----------------------------------------------------------------------------- MobileNetV3
class SqueezeExcite(nn.Module):
    def __init__(self, c: int, gate=nn.Hardsigmoid, act=nn.ReLU, ratio: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(c, max(8, c // ratio), 1)
        self.act = act()
        self.expand = nn.Conv2d(max(8, c // ratio), c, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class MobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        hs = nn.Hardswish
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=hs), InvertedResidual(16, 16, 2, 1, nn.ReLU, SqueezeExcite),
            InvertedResidual(16, 24, 2, 4, nn.ReLU), InvertedResidual(24, 24, 1, 3, nn.ReLU),
            InvertedResidual(24, 40, 2, 3, hs, SqueezeExcite, k=5), InvertedResidual(40, 40, 1, 3, hs, SqueezeExcite, k=5),
            conv_bn(40, 96, 1, act=hs))
        self.classifier = nn.Sequential(nn.Linear(96, 128), hs(), nn.Dropout(0.2), nn.Linear(128, CLASSES))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ----------------------------------------------------------------------------- EfficientNet
def _se_silu(c: int) -> SqueezeExcite:
    return SqueezeExcite(c, gate=nn.Sigmoid, act=nn.SiLU)


class EfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        silu = nn.SiLU
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=silu), InvertedResidual(16, 8, 1, 1, silu, _se_silu),
            InvertedResidual(8, 16, 2, 6, silu, _se_silu), InvertedResidual(16, 16, 1, 6, silu, _se_silu),
            InvertedResidual(16, 24, 2, 6, silu, _se_silu, k=5), InvertedResidual(24, 24, 1, 6, silu, _se_silu, k=5),
            conv_bn(24, 96, 1, act=silu))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(96, CLASSES))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ----------------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor, as torchvision's ConvNeXt writes it (permute)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))  # layer scale (1e-6 at init; trained values are larger)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 4, 4), LayerNorm2d(24, eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(24), ConvNeXtBlock(24))
        self.down = nn.Sequential(LayerNorm2d(24, eps=1e-6), nn.Conv2d(24, 48, 2, 2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(48), ConvNeXtBlock(48))
        self.norm = nn.LayerNorm(48, eps=1e-6)
        self.head = nn.Linear(48, CLASSES)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


# ----------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # timm's fused path; exported as MatMul/Softmax/MatMul
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 48, patch: int = 8, size: int = 64):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(TransformerBlock(dim, 4), TransformerBlock(dim, 4))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


# ----------------------------------------------------------------------------- Swin
class WindowAttention(nn.Module):
    """Swin's W-MSA: relative position bias gathered from a table by an int64 index buffer."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads, self.scale = window, heads, (dim // heads) ** -0.5
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten(), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.table[self.index].reshape(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, res: int, window: int, heads: int, shift: int):
        super().__init__()
        self.res, self.window, self.shift = res, window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, window, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)
        mask = None
        if shift:
            img = torch.zeros(1, res, res, 1)
            cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            for i, (hs, ws) in enumerate((h, w) for h in cuts for w in cuts):
                img[:, hs, ws, :] = i
            win = self._windows(img).squeeze(-1)
            mask = (win.unsqueeze(1) - win.unsqueeze(2)).ne(0).float() * -100.0
        self.register_buffer("mask", mask, persistent=False)

    def _windows(self, x):
        b, h, w, c = x.shape
        s = self.window
        return x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)

    def forward(self, x):
        b, n, c = x.shape
        h = w = self.res
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = self.attn(self._windows(y), self.mask)
        s = self.window
        y = y.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, res: int):
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        b, n, c = x.shape
        x = x.view(b, self.res, self.res, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class Swin(nn.Module):
    def __init__(self, dim: int = 32, size: int = 64):
        super().__init__()
        res = size // 4
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.patch_norm = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, res, 4, 2, 0), SwinBlock(dim, res, 4, 2, 2))
        self.merge = PatchMerging(dim, res)
        self.stage2 = nn.Sequential(SwinBlock(2 * dim, res // 2, 4, 4, 0), SwinBlock(2 * dim, res // 2, 4, 4, 2))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, CLASSES)

    def forward(self, x):
        x = self.patch_norm(self.patch(x).flatten(2).transpose(1, 2))
        x = self.stage2(self.merge(self.stage1(x)))
        return self.head(self.norm(x).mean(1))


# ----------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8):
        super().__init__()
        c = 16
        layers = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        for block in range(2):
            for _ in range(3):
                layers.append(DenseLayer(c, growth))
                c += growth
            if block == 0:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# ----------------------------------------------------------------------------- Inception
class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c1: int, c3: int, c5: int, cp: int):
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, c3 // 2, 1), conv_bn(c3 // 2, c3, 3))
        self.b5 = nn.Sequential(conv_bn(cin, c5 // 2, 1), conv_bn(c5 // 2, c5, 3), conv_bn(c5, c5, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1), conv_bn(16, 32, 3))
        self.blocks = nn.Sequential(InceptionBlock(32, 16, 24, 8, 8), nn.MaxPool2d(3, 2, 1),
                                    InceptionBlock(56, 24, 32, 12, 12))
        self.fc = nn.Linear(80, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


# ----------------------------------------------------------------------------- SqueezeNet
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1's layout; like torchvision's it has no BatchNorm, and its output is the
    (N, K, 1, 1) of the final pooling (the original model-zoo graphs end there)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 8, 32), Fire(64, 8, 32),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(64, 16, 48), Fire(96, 16, 48))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(96, CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------- registry
ARCHS: dict[str, type[nn.Module]] = {
    "resnet": ResNet, "mobilenetv2": MobileNetV2, "mobilenetv3": MobileNetV3, "efficientnet": EfficientNet,
    "convnext": ConvNeXt, "vit": ViT, "swin": Swin, "densenet": DenseNet, "inception": Inception,
    "squeezenet": SqueezeNet,
}
# Position embeddings and window partitions fix H and W; these are exported with a dynamic batch only.
FIXED_SIZE = {"vit", "swin"}


def settle_batchnorm(model: nn.Module, images: torch.Tensor, parts: list[nn.Module] | None = None) -> nn.Module:
    """`model` in eval mode, with the BatchNorm statistics of `parts` (default: all of it) measured on
    `images` (train-mode passes with a cumulative average, as a trained model's running statistics
    would be); every other module stays as it is (a pretrained backbone keeps its statistics)."""
    model.eval()
    bns = [m for part in (parts or [model]) for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative moving average over the passes below
        bn.reset_running_stats()
        bn.train()
    if bns:
        with torch.no_grad():
            for chunk in images.split(8):
                model(chunk)
    return model.eval()


def build(name: str, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """`name` with seeded random weights and BatchNorm statistics measured on `images`, in eval mode."""
    torch.manual_seed(seed)
    return settle_batchnorm(ARCHS[name](), images)
