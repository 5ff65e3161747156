"""Models of tasks that are not image classification, in plain torch, for the end-to-end tests of
models fed named arrays (`--dataset npz`, calib.data.arrays) and for corpus benchmarks to import.

- `TinyBert`: a BERT-like encoder at small widths, after HuggingFace's BertModel (embeddings of
  the token ids and positions summed, LayerNorm; per layer multi-head self-attention with the
  additive mask (1 - attention_mask) * -10000 on the scores, Softmax, the output projection,
  residual and LayerNorm, then a GELU feed-forward, residual and LayerNorm; the [CLS] row through a
  tanh pooler into class logits). Two inputs, int64 `input_ids` and `attention_mask` (N, T); two
  outputs, `last_hidden_state` (N, T, hidden) and `logits` (N, classes). Seeded random weights.
- `export_bert`: torch's legacy exporter (dynamo=False, opset 17: GELU as Erf, LayerNorm as
  LayerNormalization), batch and sequence dynamic as HuggingFace's ONNX exports declare them, or
  the batch fixed at 1 (a batch-1 export).
- `token_batches`: seeded token ids and padding masks, as a tokenizer pads a batch.
"""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 100
HIDDEN = 32
HEADS = 4
CLASSES = 3
MAX_LEN = 64
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("last_hidden_state", "logits")


class BertLayer(nn.Module):
    def __init__(self, hidden: int = HIDDEN, heads: int = HEADS, ffn: int = 2 * HIDDEN):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.heads, self.head_dim).transpose(1, 2)   # (N, heads, T, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, h = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, h)
        x = self.ln1(x + self.o(context))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class TinyBert(nn.Module):
    def __init__(self, layers: int = 2, hidden: int = HIDDEN, classes: int = CLASSES):
        super().__init__()
        self.word = nn.Embedding(VOCAB, hidden)
        self.position = nn.Embedding(MAX_LEN, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(BertLayer(hidden) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.position(positions))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return x, self.classifier(torch.tanh(self.pooler(x[:, 0])))


def build_bert(seed: int = 0, **kwargs) -> TinyBert:
    torch.manual_seed(seed)
    return TinyBert(**kwargs).eval()


def token_batches(n: int, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` samples: token ids in [1, VOCAB) with [CLS] = 1 first, padded with 0 after a seeded length
    (at least 4 tokens), and the mask that marks the real tokens (int64, as tokenizers give them)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, (n, length), dtype=np.int64)
    ids[:, 0] = 1
    lengths = rng.integers(4, length + 1, n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def export_bert(model: nn.Module, length: int = 16, fixed_batch: int | None = None,
                fixed_length: bool = False) -> onnx.ModelProto:
    """The legacy export (opset 17): batch and sequence dynamic unless fixed."""
    axes = {}
    for name in (*INPUTS, *OUTPUTS):
        dims = {} if fixed_batch else {0: "batch"}
        if not fixed_length and name != "logits":
            dims[1] = "sequence"
        if dims:
            axes[name] = dims
    example = token_batches(fixed_batch or 1, length)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
                          buf, input_names=list(INPUTS), output_names=list(OUTPUTS), dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())
