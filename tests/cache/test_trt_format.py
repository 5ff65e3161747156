import struct

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calib.cache.trt_format import (ALGORITHMS, RELEASED_TRT_VERSIONS, TrtCache, check_tensor_name, hex_to_scale,
                                    parse, released_version, scale_to_hex, version_code, version_string)
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
                                          ("11.0", 110000), ("7.2.3", 7203), ("10.16.1.11", 101601)])
def test_version_codes(version, code):
    assert version_code(version) == code
    assert version_code(version_string(code)) == code


@pytest.mark.parametrize("version", ["", "10", "x.y", "8.10.1", "10.3.100", "1000.0.0", "10.3-rc"])
def test_versions_a_header_cannot_hold_are_refused(version):
    with pytest.raises(CalibError, match="TensorRT version"):
        version_code(version)


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("hello\nx: 00000000\n", "not a TensorRT calibration cache"),
    ("TRT-8601-EntropyCalibration2\ninput: 3c01", "line 2"),
    ("TRT-8601-EntropyCalibration2\nno separator here\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\na: 3c010a14\n   : 3c010a14\n", "line 3"),
    ("TRT-8601-EntropyCalibration2\na: 3c010a14\n\na: 3c010a15\n", "line 4 repeats"),
])
def test_corrupt_caches_give_one_line_errors(text, message):
    with pytest.raises(CalibError, match=message) as e:
        parse(text, "my.cache")
    assert "\n" not in str(e.value) and "my.cache" in str(e.value)


def test_windows_line_ends_and_bom_are_read():
    cache = parse("\ufeff" + TRT_TEXT.replace("\n", "\r\n"))
    assert cache.to_text() == TRT_TEXT


def test_header_rewrite_keeps_scales():
    cache = parse(TRT_TEXT).with_version("10.3")
    assert cache.to_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert cache.to_text().splitlines()[1:] == TRT_TEXT.splitlines()[1:]


# -- names: every name the writer accepts reads back as itself; the others are refused --------

HEX = st.integers(0, 2 ** 32 - 1).map(lambda v: f"{v:08x}")
awkward_names = st.one_of(
    st.text(min_size=1, max_size=40),                                         # any unicode
    st.text(alphabet=" :\t\u00a0\u3000\u2028\u2029\x85\x0b\x0c#/\\'\"", min_size=1, max_size=20),
    st.from_regex(r"[0-9a-fA-F]{8}", fullmatch=True),                         # looks like a scale
    st.from_regex(r"[a-z]{1,5}: [0-9a-f]{8}", fullmatch=True),                # looks like a line
    st.text(min_size=2000, max_size=5000),                                    # very long
)


def _representable(name: str) -> bool:
    try:
        check_tensor_name(name)
        return True
    except CalibError:
        return False


writable_names = awkward_names.map(lambda s: s.replace("\n", " ").replace("\r", "\t")).filter(_representable)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(writable_names, HEX, min_size=1, max_size=12), st.sampled_from(ALGORITHMS),
       st.sampled_from(RELEASED_TRT_VERSIONS))
@example({"a b:c": "3f800000", "日本語 тензор": "00000001", "3f800000": "7f800000", "x: 3f800000": "ffffffff",
          " lead": "80000000", "trail ": "00800000", "a" * 4000: "3c010a14", "\u2028\x85\x0b": "00000002"},
         "EntropyCalibration2", (8, 6, 1))
def test_cache_text_round_trips_awkward_names(hex_scales, algorithm, version):
    cache = TrtCache(algorithm, version_code(".".join(map(str, version))), hex_scales)
    text = cache.to_text()
    again = parse(text)
    assert again == cache                              # names, order, hex, header
    assert list(again.hex_scales) == list(hex_scales)
    assert again.to_text() == text


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(awkward_names, HEX, min_size=1, max_size=6))
def test_the_writer_either_round_trips_or_refuses(hex_scales):
    cache = TrtCache("MinMaxCalibration", 100300, hex_scales)
    if all(_representable(n) for n in hex_scales):
        assert parse(cache.to_text()) == cache
    else:
        with pytest.raises(CalibError, match="cannot be written"):
            cache.to_text()


@given(st.text(min_size=0, max_size=30).filter(lambda s: not _representable(s)))
def test_unwritable_names_are_refused_not_written(name):
    with pytest.raises(CalibError, match="cannot be written") as e:
        TrtCache("MinMaxCalibration", 100300, {"ok": "3f800000", name: "3f800000"}).to_text()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb", "tail\n", "   ", "\t", "bad\ud800surrogate"])
def test_names_the_format_cannot_hold(name):
    with pytest.raises(CalibError, match="cannot be written"):
        TrtCache("MinMaxCalibration", 100300, {name: "3f800000"}).to_text()


@given(st.floats(width=32, allow_nan=False))
def test_float32_scales_survive_bit_for_bit(scale):
    cache = TrtCache.from_scales({"t": scale}, "MinMaxCalibration")
    assert struct.pack(">f", parse(cache.to_text()).scales["t"]) == struct.pack(">f", scale)


# -- released TensorRT versions ---------------------------------------------------------------

@pytest.mark.parametrize("version,canonical", [("8.6.1", "8.6.1"), ("10.3", "10.3.0"), ("7.2.3.4", "7.2.3"),
                                               ("10.16.1", "10.16.1"), ("9.3.0", "9.3.0")])
def test_released_versions_are_accepted(version, canonical):
    assert released_version(version) == (canonical, None)


@pytest.mark.parametrize("version", ["99.99.99", "10.3.7", "8.7.0", "10.14"])
def test_versions_never_released_are_refused(version):
    with pytest.raises(CalibError, match="not a released TensorRT version") as e:
        released_version(version)
    assert "--assume-version" in str(e.value)


def test_tensorrt_11_has_no_calibration_cache():
    with pytest.raises(CalibError, match="no implicit INT8 calibration"):
        released_version("11.0")


def test_assumed_version_is_written_with_a_warning_naming_it():
    canonical, warning = released_version("10.17.0", assume=True)
    assert canonical == "10.17.0" and "10.17.0" in warning and "TRT-101700" in warning


def test_release_table_is_7_to_10_and_sorted():
    assert RELEASED_TRT_VERSIONS == tuple(sorted(set(RELEASED_TRT_VERSIONS)))
    assert {v[0] for v in RELEASED_TRT_VERSIONS} == {7, 8, 9, 10}
