"""The decoders' names and the decode path (calib.data.decoders): the strings that go into cache
keys, and a module the CPU path imports without any GPU code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from calib.data.decoders import CPU_DECODE_PATH, CPU_DECODER, DECODERS, decode_path
from calib.data.transforms import get_preset
from calib.errors import CalibError


def test_decode_path_names():
    pre = get_preset("efficientnet-lite")
    assert decode_path(pre, "pil") == "pil"
    assert decode_path(pre, "cpu") == "pil"
    assert decode_path(pre) == "nvjpeg+pil-bicubic"
    assert decode_path(get_preset("torchvision")) == "nvjpeg+pil-bilinear"


def test_the_removed_resample_parameter_takes_only_pil():
    """Shim: callers outside calib.data still pass resample="pil" (its old default)."""
    pre = get_preset("efficientnet-lite")
    assert decode_path(pre, "nvjpeg", "pil") == "nvjpeg+pil-bicubic" and decode_path(pre, "pil", "pil") == "pil"
    assert decode_path(pre, "cpu", "torch") == "pil"   # the CPU path ignores a GPU resampler
    for decoder in ("nvjpeg", "pil"):
        with pytest.raises(CalibError, match="resample='torch' was removed"):
            decode_path(pre, decoder, "torch")
    from calib.data.dataset import Dataset
    from calib.data.gpu_stream import gpu_batches

    with pytest.raises(CalibError, match="resample='torch' was removed"):
        next(gpu_batches(Dataset(None, None, []), 8, resample="torch"))


def test_the_vocabulary():
    assert DECODERS == ("nvjpeg", "pil") and CPU_DECODER == "cpu" and CPU_DECODE_PATH == "pil"


def test_old_import_locations_still_work():
    """Shims for callers outside calib.data (calib.session, calib.calibration, calib.distributed)."""
    from calib.data import decoders, gpu_decode

    assert gpu_decode.DECODERS is decoders.DECODERS and gpu_decode.decode_path is decoders.decode_path
    assert gpu_decode.CPU_DECODE_PATH == decoders.CPU_DECODE_PATH


def test_imports_no_gpu_code():
    code = ("import sys, calib.data.decoders; "
            "gpu = [m for m in ('torch', 'calib.data.gpu_decode', 'calib.data.gpu_stream', 'calib.data.cuda', "
            "'calib.data.resample_kernel', 'calib.data.host_decode') if m in sys.modules]; "
            "assert not gpu, gpu")
    subprocess.run([sys.executable, "-c", code], check=True)
