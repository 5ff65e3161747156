"""The decoders' names and the decode path (calib.data.decoders): the strings that go into cache
keys, and a module the CPU path imports without any GPU code."""

from __future__ import annotations

import subprocess
import sys


from calib.data.decoders import CPU_DECODE_PATH, CPU_DECODER, DECODERS, decode_path
from calib.data.transforms import get_preset


def test_decode_path_names():
    pre = get_preset("efficientnet-lite")
    assert decode_path(pre, "pil") == "pil"
    assert decode_path(pre, "cpu") == "pil"
    assert decode_path(pre) == "nvjpeg+pil-bicubic"
    assert decode_path(get_preset("torchvision")) == "nvjpeg+pil-bilinear"


def test_the_vocabulary():
    assert DECODERS == ("nvjpeg", "pil") and CPU_DECODER == "cpu" and CPU_DECODE_PATH == "pil"


def test_imports_no_gpu_code():
    code = ("import sys, calib.data.decoders; "
            "gpu = [m for m in ('torch', 'calib.data.gpu_decode', 'calib.data.gpu_stream', 'calib.data.cuda', "
            "'calib.data.resample_kernel', 'calib.data.host_decode') if m in sys.modules]; "
            "assert not gpu, gpu")
    subprocess.run([sys.executable, "-c", code], check=True)
