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
