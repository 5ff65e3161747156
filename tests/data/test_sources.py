import csv
import os

import numpy as np
import pytest
from PIL import Image

from calib.data import Dataset, SkipLog, get_preset, imagenet_val, iter_batches
from calib.data.classes import imagenet_classes, wnid_to_index
from calib.errors import CalibError


def test_class_list_is_standard_imagenet_order():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0][0] == "n01440764" and classes[999][0] == "n15075141"
    assert [w for w, _ in classes] == sorted(w for w, _ in classes)


def test_partial_class_folder_keeps_standard_labels(small_imagenet):
    src = imagenet_val(small_imagenet)
    index = wnid_to_index()
    for s in src.samples:
        wnid = os.path.basename(os.path.dirname(s.key))
        assert s.label == index[wnid]
    # Only 7 class folders: a naive enumerate() labelling would give 0..6.
    assert max(s.label for s in src.samples) > 6


def test_val_subfolder_layout(small_imagenet):
    # small_imagenet is <tmp>/val/<wnid>: pointing at its parent finds val/ itself.
    assert len(imagenet_val(small_imagenet.parent)) == len(imagenet_val(small_imagenet))


def test_flat_layout_with_kaggle_csv(tmp_path):
    wnids = ["n01440764", "n15075141"]
    rows = []
    for i, wnid in enumerate(wnids):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        Image.new("RGB", (40, 30), (i * 100, 50, 50)).save(tmp_path / f"{name}.JPEG")
        rows.append({"ImageId": name, "PredictionString": f"{wnid} 1 2 3 4 {wnid} 5 6 7 8"})
    with open(tmp_path / "LOC_val_solution.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["ImageId", "PredictionString"])
        w.writeheader()
        w.writerows(rows)
    src = imagenet_val(tmp_path)
    assert [s.label for s in src.samples] == [0, 999]


def test_flat_layout_without_csv_is_a_clear_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(CalibError, match="LOC_val_solution.csv"):
        imagenet_val(tmp_path)


def test_missing_and_empty_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("CALIB_IMAGENET_VAL", raising=False)
    with pytest.raises(CalibError, match="datasets/imagenet-val.md"):
        imagenet_val(None)
    with pytest.raises(CalibError, match="not found"):
        imagenet_val(tmp_path / "nope")
    with pytest.raises(CalibError, match="no ImageNet images"):
        imagenet_val(tmp_path)


def test_env_var_names_the_folder(small_imagenet, monkeypatch):
    monkeypatch.setenv("CALIB_IMAGENET_VAL", str(small_imagenet))
    assert len(imagenet_val(None)) == len(imagenet_val(small_imagenet))


def test_odd_files_decode_or_are_skipped(small_imagenet):
    src = imagenet_val(small_imagenet)
    ds = Dataset.of(src, get_preset("efficientnet-lite"))
    skips = SkipLog()
    with pytest.warns(UserWarning, match="broken.JPEG"):
        batches = list(iter_batches(ds, 4, workers=0, skips=skips))
    keys = [k for b in batches for k in b.keys]
    assert [os.path.basename(k) for k in skips.skipped] == ["broken.JPEG"]
    assert any("with space and 'quote'" in k for k in keys)
    assert any("'" in os.path.basename(k) and "space" not in k for k in keys)
    assert len(keys) == len(src) - 1
    images = np.concatenate([b.images for b in batches])
    assert images.shape[1:] == (3, 224, 224) and np.isfinite(images).all()


def test_worker_processes_match_in_process_decoding(small_imagenet):
    ds = Dataset.of(imagenet_val(small_imagenet), get_preset("efficientnet-lite"))
    with pytest.warns(UserWarning):
        a = list(iter_batches(ds, 3, workers=0))
    with pytest.warns(UserWarning):
        b = list(iter_batches(ds, 3, workers=2))
    assert [k for x in a for k in x.keys] == [k for x in b for k in x.keys]
    np.testing.assert_array_equal(np.concatenate([x.images for x in a]), np.concatenate([x.images for x in b]))
    np.testing.assert_array_equal(np.concatenate([x.labels for x in a]), np.concatenate([x.labels for x in b]))
