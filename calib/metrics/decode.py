"""Detection decoders: a model's raw outputs -> per-image detections (boxes x1 y1 x2 y2 in the
model's input pixels, score, class index), then a confidence threshold, class-wise NMS and a cap
on detections, in numpy.

Built-in layouts (a decoder registry, `calib.metrics.decoders` entry-point group, for the rest):

- `ultralytics`: ONE output (N, 4 + C, A), as YOLOv8/YOLO11 export it (ultralytics' `Detect`
  head: per anchor cx, cy, w, h in input pixels, then C class scores after the sigmoid, no
  objectness). `transposed=True` reads (N, A, 4 + C). Candidates and NMS follow ultralytics'
  `ops.non_max_suppression` (best class per anchor unless `multi_label`, class-wise NMS by offset
  boxes, at most `max_nms` candidates into NMS, `max_detections` out); its validation defaults
  are conf 0.001, IoU 0.7, 300 detections, which are the defaults here.
- `boxes-scores`: TWO outputs, boxes (N, A, 4) and scores (N, A, C), i.e. SSD or RetinaNet AFTER
  their anchor box decode (torchvision's and TF's exports with the decode in the graph, without the
  final NMS). Expected: boxes in `box_format` ("xyxy" default, "yxyx" for TF, "cxcywh"), in input
  pixels, or in [0, 1] with `normalized=True` and `input_size=(height, width)`; scores as
  probabilities, or logits with `activation="sigmoid"` (RetinaNet) or `"softmax"` (SSD); a
  background column (`background=0` for SSD's softmax) is dropped. Which outputs: `boxes=` and
  `scores=` names, else the 3-D output whose last axis is 4 and the other one.

A layout that does not fit is one line naming the shapes found and expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from calib.errors import CalibError
from calib.plugins import Registry

ENTRY_POINT_GROUP = "calib.metrics.decoders"


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (K, 4) x1 y1 x2 y2, scores (K,), classes (K,) class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float64), np.zeros(0, np.float64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model's input: x_input = x_original * scale + pad_x (the
    letterbox of ultralytics' and most detectors' preprocessing; a plain resize has pad 0 and one
    scale per axis: `scale_y`). `to_original` maps boxes back to the image's own pixels, where
    COCO's ground truth is."""

    scale: float
    pad_x: float = 0.0
    pad_y: float = 0.0
    scale_y: float | None = None

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        sy = self.scale if self.scale_y is None else self.scale_y
        out = np.asarray(boxes, np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / sy
        return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1 y1 x2 y2 boxes."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS (as torchvision.ops.nms): indices kept, best score first; a box is dropped when its
    IoU with a kept box is above `iou_threshold`. Stops after `max_keep` boxes."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes, np.float64)
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_keep: int | None = None) -> np.ndarray:
    """Class-wise NMS: boxes of different classes never suppress each other (each class shifted by
    its own offset, as torchvision's batched_nms and ultralytics do)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    b = np.asarray(boxes, np.float64)
    offset = np.asarray(classes, np.float64)[:, None] * (float(np.abs(b).max()) + 1.0)
    return nms(b + offset, scores, iou_threshold, max_keep)


def postprocess(boxes: np.ndarray, scores: np.ndarray, conf_threshold: float = 0.001, iou_threshold: float = 0.7,
                max_detections: int = 300, multi_label: bool = False, max_nms: int = 30000) -> Detections:
    """One image's candidates (boxes (A, 4) xyxy, class scores (A, C)) -> detections: per anchor its
    best class (or every class above the threshold with `multi_label`), score > conf_threshold, the
    `max_nms` best into class-wise NMS (boxes with no area dropped), at most `max_detections` out."""
    scores = np.asarray(scores, np.float64)
    if multi_label:
        anchor, cls = np.nonzero(scores > conf_threshold)
        conf = scores[anchor, cls]
    else:
        cls = scores.argmax(1) if scores.shape[1] else np.zeros(len(scores), np.int64)
        conf = scores[np.arange(len(scores)), cls] if scores.shape[1] else np.zeros(len(scores))
        anchor = np.nonzero(conf > conf_threshold)[0]
        cls, conf = cls[anchor], conf[anchor]
    if len(conf) > max_nms:
        top = np.argsort(-conf, kind="stable")[:max_nms]
        anchor, cls, conf = anchor[top], cls[top], conf[top]
    b = np.asarray(boxes, np.float64)[anchor]
    # A box with no area (x2 <= x1 or y2 <= y1) is dropped: COCO's evaluator scores negative widths
    # inconsistently (its IoU takes the signed area), and no ground truth can be matched by one.
    good = np.nonzero((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))[0]
    b, conf, cls = b[good], conf[good], cls[good]
    keep = batched_nms(b, conf, cls, iou_threshold, max_detections)
    return Detections(b[keep], conf[keep], cls[keep].astype(np.int64))


def _shape(x: np.ndarray) -> str:
    return "(" + ", ".join(str(d) for d in x.shape) + ")"


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64)
    half = b[..., 2:4] / 2.0
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


class Decoder:
    """Base of a detection decoder. `candidates(outputs, n)` -> per image (boxes (A, 4) xyxy in
    input pixels, scores (A, C)); `decode` applies `postprocess` with the decoder's thresholds.
    `num_classes(outputs)`: C."""

    name: ClassVar[str] = ""

    def __init__(self, conf_threshold: float = 0.001, iou_threshold: float = 0.7, max_detections: int = 300,
                 multi_label: bool = False, max_nms: int = 30000):
        if not 0.0 <= conf_threshold < 1.0 or not 0.0 < iou_threshold <= 1.0 or max_detections < 1:
            raise CalibError(f"detection thresholds out of range: conf {conf_threshold} (0 to 1), "
                             f"IoU {iou_threshold} (0 to 1], max detections {max_detections} (>= 1)")
        self.post = dict(conf_threshold=conf_threshold, iou_threshold=iou_threshold, max_detections=max_detections,
                         multi_label=multi_label, max_nms=max_nms)

    def candidates(self, outputs: Mapping[str, np.ndarray], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def decode(self, outputs: Mapping[str, np.ndarray], n: int) -> list[Detections]:
        return [postprocess(b, s, **self.post) for b, s in self.candidates(outputs, n)]


_decoders: Registry[type[Decoder]] = Registry("detection decoder", Decoder, ENTRY_POINT_GROUP)


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    """Class decorator: make a decoder available under `cls.name`."""
    return _decoders.register(cls)


def available_decoders() -> list[str]:
    return _decoders.names()


def get_decoder(name: str, **params: Any) -> Decoder:
    return _decoders.get(name)(**params)


@register_decoder
class UltralyticsDecoder(Decoder):
    """ultralytics' exported detection output: (N, 4 + C, A), cx cy w h then C class scores."""

    name = "ultralytics"

    def __init__(self, output: str | None = None, transposed: bool = False, **post: Any):
        super().__init__(**post)
        self.output, self.transposed = output, transposed

    def _array(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.output is None and len(outputs) != 1:
            raise CalibError(f"decoder 'ultralytics' expects one output (N, 4+C, A), found {len(outputs)}: "
                             + ", ".join(f"{k} {_shape(np.asarray(v))}" for k, v in outputs.items())
                             + " (name it with output=)")
        x = np.asarray(outputs[self.output] if self.output is not None else next(iter(outputs.values())))
        expected = "(N, A, 4+C)" if self.transposed else "(N, 4+C, A)"
        if x.ndim != 3 or (x.shape[2] if self.transposed else x.shape[1]) < 5:
            raise CalibError(f"decoder 'ultralytics' expects an output {expected} with C >= 1 classes, "
                             f"found {_shape(x)}")
        if not self.transposed and x.shape[1] > x.shape[2]:
            raise CalibError(f"decoder 'ultralytics' expects (N, 4+C, A) with fewer rows than anchors, found "
                             f"{_shape(x)}: it looks transposed (N, A, 4+C): pass transposed=True")
        return x if self.transposed else np.swapaxes(x, 1, 2)

    def num_classes(self, outputs: Mapping[str, np.ndarray]) -> int:
        return self._array(outputs).shape[2] - 4

    def candidates(self, outputs: Mapping[str, np.ndarray], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        x = self._array(outputs)
        if x.shape[0] < n:
            raise CalibError(f"decoder 'ultralytics': output {_shape(x)} has fewer than the batch's {n} images")
        return [(cxcywh_to_xyxy(x[i, :, :4]), x[i, :, 4:]) for i in range(n)]


@register_decoder
class BoxesScoresDecoder(Decoder):
    """Two outputs: boxes (N, A, 4) and class scores (N, A, C), after the anchor box decode (SSD,
    RetinaNet). See the module docstring for what is expected."""

    name = "boxes-scores"

    def __init__(self, boxes: str | None = None, scores: str | None = None, box_format: str = "xyxy",
                 normalized: bool = False, input_size: Sequence[int] | None = None, activation: str = "none",
                 background: int | None = None, **post: Any):
        super().__init__(**post)
        if box_format not in ("xyxy", "yxyx", "cxcywh"):
            raise CalibError(f"box_format must be xyxy, yxyx or cxcywh, got '{box_format}'")
        if activation not in ("none", "sigmoid", "softmax"):
            raise CalibError(f"activation must be none, sigmoid or softmax, got '{activation}'")
        if normalized and (input_size is None or len(input_size) != 2):
            raise CalibError("normalized boxes need input_size=(height, width) to scale them to pixels")
        self.boxes, self.scores, self.box_format = boxes, scores, box_format
        self.normalized, self.input_size = normalized, tuple(input_size) if input_size else None
        self.activation, self.background = activation, background

    def _pair(self, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        arrays = {k: np.asarray(v) for k, v in outputs.items()}
        found = ", ".join(f"{k} {_shape(v)}" for k, v in arrays.items())
        expected = "boxes (N, A, 4) and scores (N, A, C)"
        bname = self.boxes
        if bname is None:
            cands = [k for k, v in arrays.items() if v.ndim == 3 and v.shape[2] == 4 and k != self.scores]
            if len(cands) != 1:
                raise CalibError(f"decoder 'boxes-scores' expects {expected}, found {found} (name them with "
                                 "boxes= and scores=)")
            bname = cands[0]
        sname = self.scores
        if sname is None:
            others = [k for k, v in arrays.items() if k != bname and v.ndim == 3]
            if len(others) != 1:
                raise CalibError(f"decoder 'boxes-scores' expects {expected}, found {found} (name them with "
                                 "boxes= and scores=)")
            sname = others[0]
        for k in (bname, sname):
            if k not in arrays:
                raise CalibError(f"decoder 'boxes-scores': no output '{k}' (outputs: {found})")
        b, s = arrays[bname], arrays[sname]
        if b.ndim != 3 or b.shape[2] != 4 or s.ndim != 3 or s.shape[:2] != b.shape[:2]:
            raise CalibError(f"decoder 'boxes-scores' expects {expected} with the same N and A, "
                             f"found {bname} {_shape(b)} and {sname} {_shape(s)}")
        return b, s

    def num_classes(self, outputs: Mapping[str, np.ndarray]) -> int:
        return self._pair(outputs)[1].shape[2] - (self.background is not None)

    def candidates(self, outputs: Mapping[str, np.ndarray], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        b, s = self._pair(outputs)
        if b.shape[0] < n:
            raise CalibError(f"decoder 'boxes-scores': boxes {_shape(b)} have fewer than the batch's {n} images")
        b = np.asarray(b[:n], np.float64)
        s = np.asarray(s[:n], np.float64)
        if self.activation == "sigmoid":
            s = 1.0 / (1.0 + np.exp(-s))
        elif self.activation == "softmax":
            e = np.exp(s - s.max(axis=2, keepdims=True))
            s = e / e.sum(axis=2, keepdims=True)
        if self.background is not None:
            s = np.delete(s, self.background, axis=2)
        if self.box_format == "yxyx":
            b = b[..., [1, 0, 3, 2]]
        elif self.box_format == "cxcywh":
            b = cxcywh_to_xyxy(b)
        if self.normalized:
            h, w = self.input_size
            b = b * np.array([w, h, w, h], np.float64)
        return [(b[i], s[i]) for i in range(n)]


def choose_decoder(outputs: Mapping[str, np.ndarray], name: str = "auto", **params: Any) -> Decoder:
    """The decoder `name`, or for "auto" the built-in whose layout the outputs have: one 3-D output
    -> ultralytics, two -> boxes-scores; otherwise a CalibError asking for a decoder name."""
    if name != "auto":
        return get_decoder(name, **params)
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    three = [k for k, v in arrays.items() if v.ndim == 3]
    if len(arrays) == 1 and len(three) == 1:
        return get_decoder("ultralytics", **params)
    if len(three) == 2:
        return get_decoder("boxes-scores", **params)
    found = ", ".join(f"{k} {_shape(v)}" for k, v in arrays.items())
    raise CalibError(f"cannot tell the detection layout of outputs {found}: expected one (N, 4+C, A) output "
                     f"(ultralytics) or boxes (N, A, 4) + scores (N, A, C); pass a decoder "
                     f"({', '.join(available_decoders())}) or a plug-in of group {ENTRY_POINT_GROUP}")


__all__ = ["ENTRY_POINT_GROUP", "BoxesScoresDecoder", "Decoder", "Detections", "Letterbox",
           "UltralyticsDecoder", "available_decoders", "batched_nms", "box_iou", "choose_decoder", "cxcywh_to_xyxy",
           "get_decoder", "nms", "postprocess", "register_decoder"]
