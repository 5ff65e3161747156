"""The data plan: the dataset options checked before any model, and --samples left out decided
from the folder."""

import pytest

from calib.errors import CalibError


def test_samples_left_out_is_half_the_folder_at_most_500(small_imagenet):
    from calib.data.plan import default_samples, plan_data
    from calib.data.sources import imagenet_val
    from calib.data.transforms import get_preset

    images = len(imagenet_val(str(small_imagenet)).samples)
    pre = get_preset("torchvision")
    folder = str(small_imagenet)
    assert plan_data("imagenet-val", folder, pre).requested_samples == images // 2   # the rest evaluates
    calibrate = plan_data("imagenet-val", folder, pre, evaluate=False)
    assert calibrate.requested_samples == len(calibrate.calibration) == images       # calibrate: all of it
    assert plan_data("imagenet-val", folder, pre, eval_data_dir=folder).requested_samples == images
    assert plan_data("imagenet-val", folder, pre, 3).requested_samples == 3
    assert plan_data("demo", None, pre).requested_samples == 500                     # the demo: all its variants
    assert default_samples(5000, shared=True) == default_samples(5000, shared=False) == 500
    assert default_samples(1, shared=True) == 1                                       # never 0
    with pytest.raises(CalibError, match="--samples must be at least 1"):
        plan_data("imagenet-val", folder, pre, 0)


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
