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


def _flat(tmp_path, rows, images=("ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"), header="ImageId,PredictionString"):
    for name in images:
        Image.new("RGB", (16, 12), (90, 50, 50)).save(tmp_path / f"{name}.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path


@pytest.mark.parametrize("rows,message", [
    (["ILSVRC2012_val_00000001,n01440764 1 2 3 4", "ILSVRC2012_val_00000002"], "line 3: malformed row"),
    (["ILSVRC2012_val_00000001,n01440764 1 2 3 4", "ILSVRC2012_val_00000002,"], "line 3: malformed row"),
    (["ILSVRC2012_val_00000001,n01440764 1 2 3 4,extra"], "line 2: malformed row"),
    (["ILSVRC2012_val_00000001,n01440764 1 2 3 4", "ILSVRC2012_val_00000002,n99999999 1 2 3 4"],
     "line 3: unknown wnid 'n99999999'"),
    (["ILSVRC2012_val_00000001,n01440764 1", "ILSVRC2012_val_00000001,n15075141 1"], "line 3: .* labelled again"),
])
def test_flat_csv_errors_name_the_line(tmp_path, rows, message):
    _flat(tmp_path, rows)
    with pytest.raises(CalibError, match=message) as e:
        imagenet_val(tmp_path)
    assert "LOC_val_solution.csv" in str(e.value) and "\n" not in str(e.value)


def test_flat_csv_without_its_header_is_refused(tmp_path):
    _flat(tmp_path, ["ILSVRC2012_val_00000001,n01440764 1"], header="id,label")
    with pytest.raises(CalibError, match="line 1: expected the header"):
        imagenet_val(tmp_path)


def test_flat_images_without_a_csv_row_are_counted_not_dropped_silently(tmp_path):
    _flat(tmp_path, ["ILSVRC2012_val_00000001,n01440764 1 2 3 4"],
          images=("ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"))
    with pytest.warns(UserWarning, match="2 image.* have no row in .*LOC_val_solution.csv"):
        src = imagenet_val(tmp_path)
    assert len(src) == 1
    assert sorted(os.path.basename(u) for u in src.unlabeled) == ["ILSVRC2012_val_00000002.JPEG",
                                                                  "ILSVRC2012_val_00000003.JPEG"]
    assert Dataset.of(src, get_preset("torchvision")).unlabeled == src.unlabeled


def test_class_sorted_images_outside_wnid_folders_are_counted(small_imagenet):
    (small_imagenet / "not-a-class").mkdir()
    Image.new("RGB", (8, 8)).save(small_imagenet / "not-a-class" / "stray.jpg")
    Image.new("RGB", (8, 8)).save(small_imagenet / "loose.png")
    with pytest.warns(UserWarning, match="2 image"):
        src = imagenet_val(small_imagenet)
    assert sorted(os.path.basename(u) for u in src.unlabeled) == ["loose.png", "stray.jpg"]
    assert not any("stray" in s.key or "loose" in s.key for s in src.samples)


def test_a_file_as_data_dir(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CalibError, match="is a file, not a data folder"):
        imagenet_val(tmp_path / "f.txt")


def test_fingerprint_follows_the_sample_list(small_imagenet):
    src = imagenet_val(small_imagenet)
    ds = Dataset.of(src, get_preset("torchvision"))
    base = ds.fingerprint()
    assert ds.subset(ds.samples[:-1]).fingerprint() != base            # one image fewer
    assert ds.subset(ds.samples[::-1]).fingerprint() != base           # another order
    relabelled = [type(s)(s.key, s.label + 1) if i == 0 else s for i, s in enumerate(ds.samples)]
    assert ds.subset(relabelled).fingerprint() != base                 # another label
    assert ds.subset(list(ds.samples)).fingerprint() == base


def test_a_16_bit_png_folder_is_not_read_as_white(tmp_path):
    # The case: 16-bit PNGs came out with mean 254.9/255.
    root = tmp_path / "val" / "n01440764"
    root.mkdir(parents=True)
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(root / "gray16.png")
    ds = Dataset.of(imagenet_val(tmp_path), get_preset("efficientnet-lite"))
    (batch,) = list(iter_batches(ds, 4, workers=0))
    pixels = batch.images * 128 + 127                                  # undo (x - 127) / 128
    assert abs(float(pixels.mean()) - 127.5) < 8 and pixels.min() < 20 and pixels.max() > 235
