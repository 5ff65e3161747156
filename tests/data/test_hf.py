import shutil
import subprocess
import sys

import pytest

from calib.data import Dataset, get_preset, iter_batches
from calib.errors import CalibError


def test_missing_datasets_package_is_a_one_line_error(tmp_path):
    # Run in a child where `datasets` cannot be imported, whether or not it is installed here.
    code = ("import sys; sys.modules['datasets'] = None\n"
            "from calib.data.hf import HFSource\n"
            "from calib.errors import CalibError\n"
            "try:\n    HFSource('x')\nexcept CalibError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'calib[hf]'" in out and "datasets" in out


@pytest.fixture()
def image_folder(tmp_path, imagenet_sample):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "folder"
    for wnid in sorted(p.name for p in (imagenet_sample / "val").iterdir())[:3]:
        (root / wnid).mkdir(parents=True)
        for f in (imagenet_sample / "val" / wnid).iterdir():
            shutil.copy(f, root / wnid / f.name)
    return datasets, root


def test_image_folder_offline(image_folder):
    _, root = image_folder
    from calib.data.hf import HFSource

    src = HFSource(str(root))
    assert src.label_column == "label" and len(src.class_names) == 3
    assert sorted(s.label for s in src.samples) == [0, 1, 2]
    assert "label" in src.description
    batches = list(iter_batches(Dataset.of(src, get_preset("efficientnet-lite")), 2, workers=0))
    assert sum(len(b.keys) for b in batches) == 3 and batches[0].images.shape[1:] == (3, 224, 224)


def test_saved_dataset_offline(image_folder, tmp_path):
    datasets, root = image_folder
    from calib.data.hf import HFSource

    ds = datasets.load_dataset("imagefolder", data_dir=str(root))["train"]
    ds.save_to_disk(str(tmp_path / "saved"))
    src = HFSource(str(tmp_path / "saved"))
    assert len(src) == 3 and src.id.startswith("hf:")
    # Worker processes decode from the same (pickled) source.
    batches = list(iter_batches(Dataset.of(src, get_preset("torchvision")), 1, workers=2))
    assert [b.labels[0] for b in batches] == [s.label for s in src.samples]


def test_unloadable_dataset_is_a_one_line_error(tmp_path):
    pytest.importorskip("datasets")
    from calib.data.hf import HFSource

    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibError) as e:
        HFSource(str(tmp_path / "empty"))
    assert "\n" not in str(e.value)


def _tiny_split(datasets, n: int, shade: int):
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8, 3), shade + 10 * i, np.uint8)) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)


def test_a_saved_dataset_dict_reads_its_validation_split(tmp_path):
    """Issue 22, row 4: `DatasetDict.save_to_disk` writes dataset_dict.json and one folder per
    split; it was taken for an image folder ('Instruction validation corresponds to no data!')."""
    datasets = pytest.importorskip("datasets")
    from calib.data.hf import HFSource

    datasets.DatasetDict({"train": _tiny_split(datasets, 4, 0),
                          "validation": _tiny_split(datasets, 3, 100)}).save_to_disk(str(tmp_path / "dd"))
    src = HFSource(str(tmp_path / "dd"))
    assert src.id.endswith("[validation]") and len(src) == 3 and src.class_names == ["a", "b"]
    assert src.open(src.samples[0]).getpixel((0, 0)) == (100, 100, 100)
    datasets.DatasetDict({"train": _tiny_split(datasets, 2, 0)}).save_to_disk(str(tmp_path / "train_only"))
    assert HFSource(str(tmp_path / "train_only")).id.endswith("[train]")


def test_a_hub_name_without_network_fails_at_once_in_one_line(monkeypatch, capfd):
    """Issue 22, row 4: offline, a hub name printed about ten retry lines over 26 s before the
    error; without network the library is put in offline mode for the load (and put back)."""
    pytest.importorskip("datasets")
    import os
    import time

    from calib.data import hf

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "hub_reachable", lambda timeout=0: False)
    start = time.monotonic()
    with pytest.raises(CalibError, match="no network") as e:
        hf.HFSource("calib-tests/no-such-dataset")
    assert time.monotonic() - start < 10 and "\n" not in str(e.value)
    assert capfd.readouterr().err.strip() == ""                # no retry chatter
    from huggingface_hub import constants

    assert "HF_HUB_OFFLINE" not in os.environ and not constants.HF_HUB_OFFLINE


def test_the_network_probe_says_no_quickly_for_an_unreachable_hub(monkeypatch):
    import time

    from calib.data import hf

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # the discard port: nothing listens
    start = time.monotonic()
    assert hf.hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 3
