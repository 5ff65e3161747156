import os
import shutil

import pytest

from calib.data import Dataset, get_preset, imagenet_val, split, take
from calib.data.overlap import overlap
from calib.data.sources import ImageSource, Sample

PRE = get_preset("torchvision")


def _folder(root):
    return Dataset.of(imagenet_val(root), PRE)


def test_a_split_of_one_folder_is_disjoint(imagenet_sample):
    calibration, evaluation = split(_folder(imagenet_sample), 100, seed=0)
    o = overlap(calibration, evaluation)
    assert o.disjoint and o.count == 0 and (o.calibration, o.evaluation) == (100, 400)
    assert o.to_dict()["disjoint"] is True and "disjoint" in o.describe()


def test_the_same_folder_again_overlaps_by_the_calibration_images(imagenet_sample):
    # The case: --data-dir D --eval-data-dir D --samples 100.
    full = _folder(imagenet_sample)
    calibration = take(full, 100, seed=0)
    o = overlap(calibration, _folder(imagenet_sample))
    assert not o.disjoint and o.count == o.same_sample == 100 and o.evaluation == len(full)
    assert "100 of the" in o.describe()


def test_copies_and_symlinks_are_found(tmp_path, small_imagenet):
    calibration = _folder(small_imagenet)
    n = len(calibration)
    copy = tmp_path / "copy"
    shutil.copytree(small_imagenet, copy / "val")
    o = overlap(calibration, _folder(copy))
    assert o.same_content + o.same_sample == o.count
    # Every readable copy has the bytes of its original (broken.JPEG included: bytes, not pixels).
    assert o.same_content == n and o.same_sample == 0
    link = tmp_path / "link"
    os.symlink(small_imagenet, link)
    o = overlap(calibration, _folder(link))
    assert o.same_sample == n and o.same_content == 0


def test_only_files_of_equal_size_are_hashed(tmp_path, small_imagenet):
    calibration = _folder(small_imagenet)
    other = tmp_path / "other" / "val" / "n01440764"
    other.mkdir(parents=True)
    first = calibration.samples[0].key
    size = os.path.getsize(first)
    (other / "same-size.JPEG").write_bytes(b"\0" * size)          # same size, other bytes
    (other / "other-size.JPEG").write_bytes(b"\0" * (size + 1))
    o = overlap(calibration, _folder(tmp_path / "other"))
    assert o.disjoint
    sizes = [os.path.getsize(s.key) for s in calibration.samples]
    assert o.hashed == 1 + sizes.count(size)                       # never the file of another size


def test_the_demo_says_its_calibration_images_come_from_its_evaluation_photos():
    pytest.importorskip("skimage")
    from calib.data.demo import DemoSource

    calibration = Dataset.of(DemoSource(variants=True), PRE)
    evaluation = Dataset.of(DemoSource(variants=False), PRE)
    o = overlap(calibration, evaluation)
    assert not o.disjoint and o.derived == o.count == len(evaluation) == 5
    assert "derived from the same image" in o.describe()
    assert "copies of the 5 evaluation photos" in calibration.source.description


class _Rows(ImageSource):
    """An in-memory source like hf: keys are row ids."""

    kind = "hf"

    def __init__(self, spec, rows):
        super().__init__([Sample(str(i), 0) for i in rows], f"hf:{spec}")


def test_in_memory_sources_overlap_by_sample_id():
    a = Dataset(_Rows("x", range(10)), PRE, _Rows("x", range(10)).samples)
    assert overlap(a, Dataset(_Rows("x", range(5, 20)), PRE, _Rows("x", range(5, 20)).samples)).same_sample == 5
    assert overlap(a, Dataset(_Rows("y", range(10)), PRE, _Rows("y", range(10)).samples)).disjoint


def test_hf_datasets_overlap_by_row(tmp_path, imagenet_sample):
    pytest.importorskip("datasets")
    from calib.data.hf import HFSource

    root = tmp_path / "folder"
    for wnid in sorted(p.name for p in (imagenet_sample / "val").iterdir())[:3]:
        shutil.copytree(imagenet_sample / "val" / wnid, root / wnid)
    full = Dataset.of(HFSource(str(root)), PRE)
    calibration, evaluation = split(full, 1, seed=0)
    assert overlap(calibration, evaluation).disjoint
    again = Dataset.of(HFSource(str(root)), PRE)
    assert overlap(calibration, again).same_sample == 1
