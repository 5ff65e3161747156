"""The ImageNet-1k class list (standard indices: sorted wnid order), shipped as package data, and
the classes a dataset's labels name: its own (an hf: dataset has them), else ImageNet's."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Callable


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(wnid, human name) for the 1000 classes, in standard index order."""
    text = resources.files("calib.data").joinpath("synsets.txt").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        index, wnid, name = line.split(maxsplit=2)
        if int(index) != len(rows):
            raise RuntimeError(f"synsets.txt is out of order at line {len(rows) + 1}")
        rows.append((wnid, name))
    return tuple(rows)


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    return {wnid: i for i, (wnid, _) in enumerate(imagenet_classes())}


def class_name(index: int) -> str:
    return imagenet_classes()[index][1]


# `dataset` is a calib.data.Dataset, typed loosely: the dataset module imports the sources, which
# read this module's class list, so a type import here would close a circle.
def class_count(dataset: Any) -> int:
    """How many classes the dataset's labels name (its own names, else ImageNet's 1000): a
    classifier's class count must be this (calib.models.check_classes), and chance level is
    measured against it."""
    return len(getattr(dataset.source, "class_names", None) or imagenet_classes())


def class_names_of(dataset: Any) -> Callable[[int], str]:
    """Class index -> name for reports: the dataset's own names, else ImageNet's."""
    names = getattr(getattr(dataset, "source", None), "class_names", None)
    if names:
        return lambda i: names[i]
    return class_name
