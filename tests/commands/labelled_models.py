"""A detector and a segmenter whose outputs the test controls exactly, the images they read, and
their ground truth (a COCO JSON file, a folder of masks), for `calib run --labels`: figures small
enough to compute by hand (tests/commands/test_task_labels.py) and label files to break
(tests/test_bad_inputs.py).

- `box_detector`: ONNX built with onnx.helper, input (N, 3, 64, 64). Boxes (N, 3, 4) are three
  constant anchors in input pixels (`ANCHORS`); scores (N, 3, 1), one class, are the R, G and B
  values of the input's centre pixel, behind 1x1 convolutions that pass them through (a backbone
  one for INT8 to quantize).
  A solid-coloured image thus scores its three boxes with its colour.
- `colour_segmenter`: the same convolutions as the output: (N, 3, 64, 64) class scores,
  so each pixel's class is its strongest channel (0 red, 1 green, 2 blue).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SIZE = 64
IMAGE_W, IMAGE_H = 128, 96   # letterboxed to 64x48 at y 8..56: scale 0.5, padding 8 above and below
# Anchors in the input's pixels (x1, y1, x2, y2); in the image's: ([16, 16, 48, 48], [80, 16, 112, 48], [48, 64, 80, 96]).
ANCHORS = np.array([[8, 16, 24, 32], [40, 16, 56, 32], [24, 40, 40, 56]], np.float32)
# Each evaluation image's colour: its scores for anchors 0, 1, 2 (R, G, B / 255).
COLOURS = {"a.png": (230, 153, 77), "b.png": (51, 204, 128)}


def _identity_conv(nodes: list, inits: list, source: str, out: str) -> None:
    """A backbone convolution 3 -> 16 (channel i copies channel i % 3), which INT8 quantizes (its
    one-hot weights are exact in int8; the pixels round to the input's scale), and the head's
    16 -> 3 convolution that picks channels 0..2 back (fewer than 16 outputs: kept float)."""
    spread = np.zeros((16, 3, 1, 1), np.float32)
    spread[np.arange(16), np.arange(16) % 3] = 1.0
    pick = np.zeros((3, 16, 1, 1), np.float32)
    pick[np.arange(3), np.arange(3)] = 1.0
    inits += [numpy_helper.from_array(spread, "w_spread"), numpy_helper.from_array(pick, "w_pick")]
    nodes.append(helper.make_node("Conv", [source, "w_spread"], ["features"], name="backbone_conv"))
    nodes.append(helper.make_node("Conv", ["features", "w_pick"], [out], name="head_conv"))


def _save(nodes, inits, outputs, path: Path) -> Path:
    graph = helper.make_graph(nodes, "labelled", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                 ["batch", 3, SIZE, SIZE])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def box_detector(path: Path) -> Path:
    nodes, inits = [], []
    _identity_conv(nodes, inits, "images", "x")
    c = SIZE // 2
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("starts", [c, c]), ("ends", [c + 1, c + 1]), ("axes", [2, 3]), ("score_shape", [-1, 3, 1]),
               ("one_shape", [-1, 1, 1]))]
    inits += [numpy_helper.from_array(np.zeros((), np.float32), "zero"), numpy_helper.from_array(ANCHORS[None], "anchors")]
    nodes += [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["centre"]),
              helper.make_node("Reshape", ["centre", "score_shape"], ["scores"]),
              helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2, 3], keepdims=1),
              helper.make_node("Reshape", ["mean", "one_shape"], ["mean3"]),
              helper.make_node("Mul", ["mean3", "zero"], ["nothing"]),
              helper.make_node("Add", ["nothing", "anchors"], ["boxes"])]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 3, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3, 1])]
    return _save(nodes, inits, outputs, path)


def colour_segmenter(path: Path) -> Path:
    nodes, inits = [], []
    _identity_conv(nodes, inits, "images", "classes")
    return _save(nodes, inits, [helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
                 path)


def solid_images(folder: Path) -> Path:
    """a.png and b.png, IMAGE_W x IMAGE_H, each of its colour."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (IMAGE_W, IMAGE_H), colour).save(folder / name)
    return folder


def calibration_images(folder: Path, count: int = 4) -> Path:
    """Random images with the full 0..255 range, PNG (no JPEG drift)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
        pixels[0, 0], pixels[0, 1] = 0, 255
        Image.fromarray(pixels).save(folder / f"c{i}.png")
    return folder


def coco_boxes() -> dict:
    """Ground truth in the image's pixels, [x, y, w, h], one category (id 1):
    a.png: anchor 0's box exactly; a box 7 pixels right of anchor 2's (IoU 25/39 = 0.641).
    b.png: anchor 1's box exactly; a box no anchor touches."""
    anns = [("a.png", [16, 16, 32, 32]), ("a.png", [55, 64, 32, 32]), ("b.png", [80, 16, 32, 32]),
            ("b.png", [0, 0, 10, 10])]
    ids = {name: i + 1 for i, name in enumerate(COLOURS)}
    return {"images": [{"id": ids[n], "file_name": n, "width": IMAGE_W, "height": IMAGE_H} for n in COLOURS],
            "annotations": [{"id": i + 1, "image_id": ids[n], "category_id": 1, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for i, (n, b) in enumerate(anns)],
            "categories": [{"id": 1, "name": "thing"}]}


def write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data))
    return path


def half_and_half_images(folder: Path) -> Path:
    """a.png and b.png: the left half red, the right half blue."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
    pixels[:, : IMAGE_W // 2, 0] = 255
    pixels[:, IMAGE_W // 2:, 2] = 255
    for name in COLOURS:
        Image.fromarray(pixels).save(folder / name)
    return folder


def image_masks(folder: Path, suffix: str = ".png", shape: tuple[int, int] = (IMAGE_H, IMAGE_W)) -> Path:
    """Masks of the image's own size: the left half class 0, the right half class 2 but its top
    half class 1 (which the segmenter never predicts)."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2:] = 2
    mask[: h // 2, w // 2:] = 1
    for name in COLOURS:
        stem = Path(name).stem
        if suffix == ".npy":
            np.save(folder / f"{stem}.npy", mask.astype(np.int64))
        else:
            Image.fromarray(mask).save(folder / f"{stem}.png")
    return folder
