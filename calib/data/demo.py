"""The embedded demo: real photos that ship inside installed packages, labelled by hand.

It lets `calib run` work offline on a fresh machine. Five photos are far too few for a real
accuracy figure; the report says so and points at ImageNet. Calibration uses flipped and
re-cropped variants of the photos, evaluation the photos themselves: the two sets are NOT
disjoint (every calibration image is derived from an evaluation photo). Each variant's
`origin` is its photo and `derived` is true, so calib.data.overlap counts all five evaluation
photos as overlapping and the report says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps

from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError

# (package, path inside it, ImageNet-1k index, why that label)
DEMO_PHOTOS = [
    ("skimage", "data/chelsea.png", 281, "Chelsea the cat, a tabby"),
    ("skimage", "data/coffee.png", 967, "a cup of espresso"),
    ("skimage", "data/rocket.jpg", 657, "a rocket on its launch pad (ImageNet 'missile')"),
    ("skimage", "data/camera.png", 872, "the cameraman: a camera on a tripod (grayscale)"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", 652, "Grace Hopper in navy uniform"),
]

# Variants for calibration: (flip, crop box as fractions of width/height).
_VARIANTS = [
    (False, (0.0, 0.0, 0.85, 0.85)), (False, (0.15, 0.15, 1.0, 1.0)),
    (False, (0.0, 0.15, 0.85, 1.0)), (False, (0.15, 0.0, 1.0, 0.85)),
    (True, (0.05, 0.05, 0.95, 0.95)), (True, (0.0, 0.0, 1.0, 1.0)),
    (True, (0.1, 0.0, 0.9, 0.8)), (True, (0.0, 0.2, 0.8, 1.0)),
]


def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise CalibError(f"the demo images ship with '{name}', which is not installed: pip install {name}")
    return Path(spec.origin).parent


def demo_photos() -> list[tuple[str, int]]:
    photos = []
    for package, rel, label, _ in DEMO_PHOTOS:
        path = _package_dir(package if package != "skimage" else "skimage") / rel
        if not path.is_file():
            raise CalibError(f"demo image missing from the installed '{package}' package: {path}")
        photos.append((str(path), label))
    return photos


def _split(key: str) -> tuple[str, str]:
    """'<photo path>#<variant index>' -> (path, index); a photo's key -> (path, '')."""
    path, sep, variant = key.rpartition("#")
    return (path, variant) if sep and variant.isdigit() else (key, "")


class DemoSource(ImageSource):
    """Demo photos; with `variants=True`, flipped/cropped variants of them for calibration."""

    def __init__(self, variants: bool):
        photos = demo_photos()
        if variants:
            samples = [Sample(f"{path}#{i}", label) for path, label in photos for i in range(len(_VARIANTS))]
        else:
            samples = [Sample(path, label) for path, label in photos]
        if variants:
            description = (f"embedded demo calibration variants ({len(samples)} images: flipped/cropped "
                           f"copies of the {len(photos)} evaluation photos)")
        else:
            description = f"embedded demo photos ({len(samples)} images)"
        super().__init__(samples, "demo", description)

    def open(self, sample: Sample) -> Image.Image:
        path, variant = _split(sample.key)
        image = Image.open(path)
        image.load()
        if not variant:
            return image
        flip, (x0, y0, x1, y1) = _VARIANTS[int(variant)]
        w, h = image.size
        image = image.crop((int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h)))
        return ImageOps.mirror(image) if flip else image

    def origin(self, sample: Sample) -> str:
        # A variant is an image of its photo: same origin, so overlap counts it.
        return os.path.realpath(_split(sample.key)[0])

    def derived(self, sample: Sample) -> bool:
        return bool(_split(sample.key)[1])

    def content_path(self, sample: Sample) -> str | None:
        return None if self.derived(sample) else sample.key

    def relative_key(self, sample: Sample) -> str:
        path, variant = _split(sample.key)
        return os.path.basename(path) + (f"#{variant}" if variant else "")
