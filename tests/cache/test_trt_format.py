import struct

import numpy as np
import pytest

from calib.cache.trt_format import TrtCache, hex_to_scale, parse, scale_to_hex, version_code, version_string
from calib.errors import CalibError

# A cache as TensorRT 8.6 writes it (names with colons and slashes occur in real ONNX graphs).
TRT_TEXT = """TRT-8601-EntropyCalibration2
input: 3c010a14
/_conv_stem/Conv_output_0: 3d8c7bd3
onnx::Conv_1055: 00000001
weird:name:with:colons: 7f7fffff
"""


def test_round_trip_is_bit_exact():
    cache = parse(TRT_TEXT)
    assert cache.to_text() == TRT_TEXT
    assert cache.algorithm == "EntropyCalibration2" and cache.version_code == 8601
    assert list(cache.hex_scales) == ["input", "/_conv_stem/Conv_output_0", "onnx::Conv_1055", "weird:name:with:colons"]
    # The denormal survives: hex strings are kept as written.
    assert cache.scales["onnx::Conv_1055"] == struct.unpack(">f", bytes.fromhex("00000001"))[0]


def test_scales_to_hex_and_back_exactly():
    rng = np.random.default_rng(0)
    scales = {f"t{i}": float(np.float32(s)) for i, s in enumerate(rng.lognormal(-4, 2, 200))}
    cache = TrtCache.from_scales(scales, "MinMaxCalibration", "10.3.0")
    again = parse(cache.to_text())
    assert again.scales == scales
    assert again.header == "TRT-100300-MinMaxCalibration"
    assert scale_to_hex(1.0) == "3f800000" and hex_to_scale("3f800000") == 1.0


@pytest.mark.parametrize("version,code", [("8.6.1", 8601), ("8.5", 8500), ("10.3", 100300), ("10.0.1", 100001),
                                          ("11.0", 110000)])
def test_version_codes(version, code):
    assert version_code(version) == code
    assert version_code(version_string(code)) == code


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("hello\nx: 00000000\n", "not a TensorRT calibration cache"),
    ("TRT-8601-EntropyCalibration2\ninput: 3c01", "line 2"),
    ("TRT-8601-EntropyCalibration2\nno separator here\n", "line 2"),
])
def test_corrupt_caches_give_one_line_errors(text, message):
    with pytest.raises(CalibError, match=message) as e:
        parse(text, "my.cache")
    assert "\n" not in str(e.value) and "my.cache" in str(e.value)


def test_header_rewrite_keeps_scales():
    cache = parse(TRT_TEXT).with_version("10.3")
    assert cache.to_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert cache.to_text().splitlines()[1:] == TRT_TEXT.splitlines()[1:]
