"""The data plan: the dataset options checked before any model."""

import pytest

from calib.errors import CalibError


def test_an_unknown_dataset_is_named_whatever_folder_options_come_with_it(tmp_path):
    """`--dataset tfrecord --data-dir X` (npz, before calib read .npz folders) said the dataset 'reads
    the images its name gives'; an unknown name is said as unknown, with the choices, before the
    folder options are judged."""
    from calib.data.plan import check_dataset_options

    with pytest.raises(CalibError, match="unknown dataset 'tfrecord' \\(choose from: demo, imagenet-val, images, npz"):
        check_dataset_options("tfrecord", str(tmp_path))
    check_dataset_options("npz", str(tmp_path))   # a folder of .npz files
    with pytest.raises(CalibError, match="embedded photos"):
        check_dataset_options("demo", str(tmp_path))
    check_dataset_options("images", str(tmp_path))
