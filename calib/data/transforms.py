"""Preprocessing presets: PIL image -> float32 CHW array.

One preset object is used for calibration and evaluation alike, so preprocessing cannot
drift between them; its `params` go into cache metadata (the cache key), so a preset whose
normalisation or channel order was changed (`normalised`: `--mean`, `--std`, `--channel-order`)
never reuses the cache of another. The defaults serialize exactly as they always have: the
channel order enters `params` only when it is not RGB.

`--mean` and `--std` follow torchvision's `Normalize` after `ToTensor` (and ONNX Runtime's
image-classification samples): values on the [0, 1] pixel scale, in R, G, B order whatever the
channel order, so `--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225` is ImageNet's. The preset
stores them in 0-255 pixel units (x - 255·mean) / (255·std), the arithmetic every decode path
already does.

The geometry of a preset (`geometry`, `fit_mask`) is the same crop, resize or letterbox applied to
what lies on the image: a box's coordinates (a detector's boxes mapped back to the image, where
COCO's ground truth is) and a label mask (resized nearest neighbour, padding marked void), so
ground truth lands where the model saw the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from calib.errors import CalibError

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
LETTERBOX_FILL = 114   # ultralytics' padding value (its LetterBox transform)
CHANNEL_ORDERS = ("rgb", "bgr")
MASK_VOID = 255        # the label of a mask's letterbox padding: void, not counted (VOC's, Cityscapes' ignore index)


class Geometry(NamedTuple):
    """How an image's coordinates land in the model's input: x_input = x_image * scale_x + offset_x
    (and y alike). A crop has a negative offset; a letterbox a positive one (its padding)."""
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


@dataclass(frozen=True)
class Preprocess:
    """Center crop (or letterbox) + resize + per-channel normalisation, in one of three styles.

    - crop="padded" (TensorFlow EfficientNet style): crop a center square of side
      size/(size+crop_padding) of the short side, then resize it to size x size.
    - crop="resize_then_crop" (torchvision style): resize the short side to resize_to, then
      center crop size x size.
    - crop="letterbox" (ultralytics' YOLO style, `LetterBox(auto=False)`): resize the long side to
      size keeping the aspect ratio, centre the image on a size x size canvas of gray 114; with
      mean 0 and std 255 the model sees RGB in [0, 1]. Nothing of the image is cut off, which a
      detector needs: a crop would drop the objects near the edges.

    `mean` and `std` are in 0-255 pixel units, R, G, B; `channel_order` "bgr" hands the model its
    normalised channels in B, G, R order (models trained on OpenCV's images).
    """

    name: str
    size: int
    crop: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_padding: int = 32
    resize_to: int = 256
    channel_order: str = "rgb"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.crop == "resize_then_crop" and self.resize_to < self.size:
            raise CalibError(f"preprocessing {self.name}: a {self.size} crop of a short side resized to "
                             f"{self.resize_to} would stretch the image; resize to at least {self.size}")

    @property
    def params(self) -> dict:
        params = {
            "name": self.name, "size": self.size, "crop": self.crop, "mean": list(self.mean),
            "std": list(self.std), "interpolation": self.interpolation,
            "crop_padding": self.crop_padding, "resize_to": self.resize_to,
        }
        if self.channel_order != "rgb":   # only then: the default params (and cache keys) stay as they were
            params["channel_order"] = self.channel_order
        return params

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The float32 (3, size, size) array a model takes."""
        x = self.pixels(image).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.channel_order == "bgr":
            x = x[:, :, ::-1]
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The crop, resized: uint8 (size, size, 3) rows, before normalisation (what the GPU
        path's Pillow workers send, calib.data.host_decode)."""
        fitted = self._fit(to_rgb(image), _RESAMPLE[self.interpolation], (LETTERBOX_FILL,) * 3)
        return np.asarray(fitted, dtype=np.uint8)

    def _fit(self, image: Image.Image, resample: int, fill) -> Image.Image:
        """The crop and resize (or the letterbox) of `image`, as a size x size image of its mode."""
        w, h = image.size
        if self.crop == "letterbox":
            scale = min(self.size / w, self.size / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            canvas = Image.new(image.mode, (self.size, self.size), fill)
            canvas.paste(image.resize((nw, nh), resample), ((self.size - nw) // 2, (self.size - nh) // 2))
            return canvas
        if self.crop == "padded":
            side = int(self.size / (self.size + self.crop_padding) * min(w, h))
            left, top = (w - side + 1) // 2, (h - side + 1) // 2
            return image.resize((self.size, self.size), resample, box=(left, top, left + side, top + side))
        scale = self.resize_to / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.resize((nw, nh), resample)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def geometry(self, width: int, height: int) -> Geometry:
        """Where a `width` x `height` image's coordinates land in the input (`_fit`'s arithmetic):
        per axis the resize's own factor (new size / old size, as Pillow maps pixel edges) and the
        letterbox's padding or the crop's offset."""
        w, h, s = width, height, self.size
        if self.crop == "letterbox":
            scale = min(s / w, s / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            return Geometry(nw / w, nh / h, float((s - nw) // 2), float((s - nh) // 2))
        if self.crop == "padded":
            side = int(s / (s + self.crop_padding) * min(w, h))
            left, top = (w - side + 1) // 2, (h - side + 1) // 2
            return Geometry(s / side, s / side, -left * s / side, -top * s / side)
        scale = self.resize_to / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        return Geometry(nw / w, nh / h, -float((nw - s) // 2), -float((nh - s) // 2))

    def fit_mask(self, mask: np.ndarray) -> np.ndarray:
        """A label mask of the image's own (H, W) put where the model saw the image's pixels: the
        same crop and resize (or letterbox), nearest neighbour (class ids are not averaged), the
        letterbox's padding void (`MASK_VOID`). int64 (size, size)."""
        m = np.asarray(mask)
        if m.ndim != 2:
            raise CalibError(f"a label mask has one class id per pixel, (H, W); found shape {list(m.shape)}")
        image = Image.fromarray(m.astype(np.int32))   # mode "I"
        return np.asarray(self._fit(image, Image.Resampling.NEAREST, MASK_VOID), dtype=np.int64)


def pil_rows(image: Image.Image) -> np.ndarray:
    """A PIL image as the CPU path sees it (plain RGB, `to_rgb`), uint8 (H, W, 3) rows."""
    return np.asarray(to_rgb(image), dtype=np.uint8)


def pil_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image as the CPU path sees it (plain RGB, `to_rgb`), uint8 (3, H, W) planes."""
    return np.ascontiguousarray(pil_rows(image).transpose(2, 0, 1))


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK, alpha and high-bit-depth images become plain 8-bit RGB.

    PIL's own convert("RGB") clips 16-bit and 32-bit values at 255 (a 16-bit PNG comes out
    nearly white), so those are scaled to 0..255 first (`_to_8bit`). Transparent pixels are
    composited on white. 16-bit RGB(A) PNGs already open as 8-bit RGB(A) in Pillow.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _to_8bit(image).convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _bit_depth(image: Image.Image) -> int | None:
    """Bits per sample of a single-channel integer image, where the file says."""
    if image.mode.startswith("I;16"):
        return 16
    if getattr(image, "format", None) == "PNG":
        return 16  # PNG's only grayscale depth above 8 bits (8-bit grayscale opens as "L")
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)  # TIFF BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        if isinstance(bits, int) and bits > 0:
            return bits
    return None


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float single-channel image scaled into an 8-bit "L" image.

    Integers are scaled by their type's full range (2**bits - 1; the file's BitsPerSample, or
    the smallest of 8/16/32 bits that holds the values when the file does not say). Floats are
    taken as 0..1 when they fit, else as 8-bit or 16-bit values by the same rule.
    """
    x = np.asarray(image, dtype=np.float64)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(x.max()) if x.size else 0.0
    if image.mode == "F":
        peak = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0 if top <= 65535.0 else top
    else:
        bits = _bit_depth(image)
        if bits is None:
            bits = 8 if top <= 255 else 16 if top <= 65535 else 32
        peak = float(2 ** bits - 1)
    y = np.clip(np.rint(x * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(y)  # uint8, 2-D: mode "L"


def parse_channels(value: "str | Sequence[float] | None", option: str) -> tuple[float, float, float] | None:
    """`--mean` / `--std` as typed ("0.485,0.456,0.406") or as three numbers: R, G, B on the
    [0, 1] pixel scale (torchvision's Normalize after ToTensor). A one-line CalibError for
    anything else: not three values, not numbers, not finite, a mean outside [0, 1] or a std
    outside (0, 1] (values in 0-255 units are named as such: divide them by 255)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise CalibError(f"{option} takes three numbers R,G,B on the [0, 1] scale (as torchvision's Normalize), "
                         f"not '{text}'")
    if option.endswith("std") and min(values) <= 0:
        raise CalibError(f"{option} {text}: a standard deviation must be above 0 in every channel (it divides)")
    if min(values) < 0 or max(values) > 1:
        raise CalibError(f"{option} {text}: values are on the [0, 1] scale (torchvision's Normalize, after dividing "
                         "the pixels by 255); divide 0-255 values by 255")
    return values  # type: ignore[return-value]


def check_channel_order(order: str) -> str:
    """`--channel-order`: rgb or bgr; a one-line CalibError otherwise."""
    if order not in CHANNEL_ORDERS:
        raise CalibError(f"--channel-order must be one of {', '.join(CHANNEL_ORDERS)}, not '{order}'")
    return order


def check_normalisation(mean: "str | Sequence[float] | None" = None, std: "str | Sequence[float] | None" = None,
                        channel_order: str = "rgb") -> None:
    """--mean, --std and --channel-order read as `normalised` reads them, before there is a preset
    to apply them to: a typo is one line before the model is exported."""
    parse_channels(mean, "--mean")
    parse_channels(std, "--std")
    check_channel_order(channel_order)


def normalised(pre: Preprocess, mean: "str | Sequence[float] | None" = None,
               std: "str | Sequence[float] | None" = None, channel_order: str = "rgb") -> Preprocess:
    """The preset with its normalisation and channel order overridden (`--mean`, `--std` on the
    [0, 1] scale, R, G, B; `--channel-order`); unchanged, the same object, when none is given."""
    changes: dict = {}
    m, s = parse_channels(mean, "--mean"), parse_channels(std, "--std")
    if m is not None:
        changes["mean"] = tuple(v * 255 for v in m)
    if s is not None:
        changes["std"] = tuple(v * 255 for v in s)
    if check_channel_order(channel_order) != pre.channel_order:
        changes["channel_order"] = channel_order
    return replace(pre, **changes) if changes else pre


def efficientnet_lite(size: int = 224) -> Preprocess:
    # The EfficientNet-Lite weights were trained in TF with (x - 127) / 128; ImageNet mean/std
    # costs about 10 points of top-1 on these weights.
    return Preprocess(name=f"efficientnet-lite-{size}", size=size, crop="padded",
                      mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


TORCHVISION_CROP = 0.875   # torchvision's 224 of 256 (timm's default crop_pct)


def torchvision_imagenet(size: int = 224, resize_to: int | None = None) -> Preprocess:
    """torchvision's ImageNet evaluation: the short side resized to 256, then a size x size centre
    crop. An input over 256 is resized to size / 0.875 first (366 for 320): resizing to 256 and
    cropping 320 stretched each axis by its own factor."""
    if resize_to is None:
        resize_to = 256 if size <= 256 else round(size / TORCHVISION_CROP)
    return Preprocess(name="torchvision", size=size, crop="resize_then_crop",
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear",
                      resize_to=resize_to)


def letterbox(size: int = 640) -> Preprocess:
    """YOLO-style detectors (ultralytics' export): letterboxed to size x size, RGB in [0, 1]."""
    return Preprocess(name="letterbox", size=size, crop="letterbox", mean=(0.0, 0.0, 0.0),
                      std=(255.0, 255.0, 255.0), interpolation="bilinear")


PRESETS = {
    "efficientnet-lite": efficientnet_lite,
    "torchvision": torchvision_imagenet,
    "letterbox": letterbox,
}


def get_preset(name: str, size: int | None = None) -> Preprocess:
    """A preset by name; `size` overrides the output side (from the model's input shape)."""
    base, _, suffix = name.partition("-lite-") if name.startswith("efficientnet-lite-") else (name, "", "")
    if suffix:
        base, size = "efficientnet-lite", int(suffix) if suffix.isdigit() else size
    if base not in PRESETS:
        raise CalibError(f"unknown preprocessing preset '{name}' (choose from: {', '.join(PRESETS)})")
    return PRESETS[base](size) if size else PRESETS[base]()
