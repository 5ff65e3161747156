"""Hugging Face `datasets` as an optional source: `--dataset hf:<name-or-path>`.

Offline, <name-or-path> is a folder written by `Dataset.save_to_disk` or
`DatasetDict.save_to_disk`, or an image folder (`<dir>/<class>/*.jpg`, loaded with the
`imagefolder` builder); with network, a hub name. Without network a hub name is looked up in
Hugging Face's offline mode (its local cache only), so it fails at once instead of retrying.
Labels: the first column of type ClassLabel (usually `label`), in that feature's class order.
Those are ImageNet indices only when the dataset uses ImageNet-1k's order (as `imagenet-1k`
does); the report states the column and its class names.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from PIL import Image

from calib.data.sources import ImageSource, Sample
from calib.errors import CalibError, MissingDependency


# What a folder written by `save_to_disk` holds at its top: a Dataset writes its info and state,
# a DatasetDict (`{"train": ..., "validation": ...}.save_to_disk`) writes dataset_dict.json and
# one such folder per split. A DatasetDict folder was mistaken for an image folder.
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
NETWORK_PROBE_SECONDS = 3.0


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`
    (read with `datasets.load_from_disk`, not the imagefolder builder)."""
    return any((path / marker).is_file() for marker in SAVED_MARKERS)


def hub_endpoint() -> str:
    """The Hugging Face hub the `datasets` library would ask (HF_ENDPOINT, as huggingface_hub reads it)."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds. Name resolution is
    not bounded by a socket timeout, so the probe runs in a daemon thread that is abandoned
    when it takes too long."""
    parts = urlsplit(hub_endpoint())
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="calib-hf-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


@contextlib.contextmanager
def _offline_without_network() -> Iterator[bool]:
    """Load a hub name in Hugging Face's offline mode when the hub cannot be reached: without
    it the library retried for about 26 s, printing ten retry lines, before failing; offline it
    serves what its cache holds at once, or fails at once. Yields whether offline mode was
    switched on here (the user's own HF_HUB_OFFLINE is left as it is), and restores the
    settings afterwards: they are process-wide, and a library caller may get its network back."""
    from huggingface_hub import constants as hub_constants

    if os.environ.get("HF_HUB_OFFLINE") or hub_constants.HF_HUB_OFFLINE or hub_reachable():
        yield False
        return
    modules = [m for m in (sys.modules.get("datasets.config"), hub_constants) if m is not None]
    saved = [(m, m.HF_HUB_OFFLINE) for m in modules]
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    for m in modules:
        m.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        for m, value in saved:
            m.HF_HUB_OFFLINE = value
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


class HFSource(ImageSource):
    kind = "hf"

    def __init__(self, spec: str, split: str = "validation"):
        try:
            import datasets
        except ImportError:
            raise MissingDependency("datasets", "--dataset hf:...", "pip install 'calib[hf]'") from None
        path = Path(spec).expanduser()
        offline = False
        try:
            if is_saved_dataset(path):
                ds = datasets.load_from_disk(str(path))
            elif path.is_dir():
                ds = datasets.load_dataset("imagefolder", data_dir=str(path))
            else:
                with _offline_without_network() as offline:
                    ds = datasets.load_dataset(spec)
        except Exception as e:  # the library raises many types; one line is enough for the user
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if offline:
                why = (f"no network to reach {hub_endpoint()}, and it is not in the local Hugging Face cache "
                       f"(a folder written by save_to_disk, or an image folder, works offline)")
            raise CalibError(f"cannot load Hugging Face dataset '{spec}': {why}") from None
        chosen = ""
        if isinstance(ds, datasets.DatasetDict):
            chosen = split if split in ds else next(iter(ds))
            ds = ds[chosen]
        self.image_column = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        self.label_column = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
        if self.image_column is None or self.label_column is None:
            raise CalibError(f"Hugging Face dataset '{spec}' needs an Image column and a ClassLabel column "
                             f"(has: {', '.join(ds.features)})")
        self.class_names = list(ds.features[self.label_column].names)
        self._dataset = ds
        labels = ds[self.label_column]
        samples = [Sample(str(i), int(label)) for i, label in enumerate(labels)]
        # The split is part of the id: two splits of one dataset are different images with the same
        # row numbers (the cache key and the overlap check both go by the id).
        super().__init__(samples, f"hf:{spec}" + (f"[{chosen}]" if chosen else ""),
                         f"Hugging Face '{spec}'" + (f" split '{chosen}'" if chosen else "")
                         + f": labels from column '{self.label_column}' "
                         f"({len(self.class_names)} classes in that feature's order)")

    def open(self, sample: Sample) -> Image.Image:
        image = self._dataset[int(sample.key)][self.image_column]
        image.load()
        return image
