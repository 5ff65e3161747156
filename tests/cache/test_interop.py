"""Caches in and out of TensorRT: bit-exact scales, rewritten headers, and every refusal."""

import pytest

from calib.cache import CacheStore, InvalidCache, load_cache, parse
from calib.cache.interop import export_cache, import_cache
from calib.errors import CalibError

# As TensorRT writes them: awkward scales whose last bits a float round trip could change (the
# smallest and the largest valid scale among them: `validate.MIN_SCALE`, `MAX_SCALE`).
TRT_TEXT = """TRT-8601-EntropyCalibration2
input: 3c010a14
conv1: 00800000
conv2: 3d8c7bd3
(Unnamed Layer* 3) [Constant]_output: 7c010203
onnx::Gemm_12: 3ab2f5e1
"""
NAMES = ["input", "conv1", "conv2", "(Unnamed Layer* 3) [Constant]_output", "onnx::Gemm_12"]


@pytest.fixture()
def model(tiny_classifier):
    from calib.models import resolve_model

    return resolve_model(str(tiny_classifier))


@pytest.fixture()
def trt_cache(tmp_path):
    path = tmp_path / "trtexec.cache"
    path.write_text(TRT_TEXT)
    return path


def test_import_keeps_every_hex_scale_bit_exact(tmp_path, trt_cache, model):
    result = import_cache(trt_cache, model, CacheStore(tmp_path / "store"), required=NAMES)
    assert result.missing == []
    assert result.path.read_text() == TRT_TEXT            # the text itself, not only the floats
    entry = load_cache(result.path)
    assert entry.metadata.imported_from.endswith("trtexec.cache") and entry.metadata.key.model_sha256 == model.sha256


@pytest.mark.parametrize("text,message", [
    ("TRT-8601-EntropyCalibration2\n", "no scales"),
    ("TRT-8601-EntropyCalibration2\na: 7f800000\nb: 7f800000\n", "2 invalid scale"),
    ("TRT-8601-EntropyCalibration2\na: 3c010a14\nb: 00000001\n", "'b' = 1.4013e-45 .subnormal"),
    ("TRT-8601-EntropyCalibration2\na: 7f7fffff\nb: 3c010a14\n", "'a' = 3.40282e.38 .amax"),
    ("TRT-8601-EntropyCalibration2\na: 3c010a14\nb: bd418306\n", "'b' = -0.0472"),
    ("TRT-8601-EntropyCalibration2\na: 7fc00000\n", "nan"),
    ("TRT-8601-BestCalibration\na: 3c010a14\n", "TensorRT does not have"),
])
def test_import_refuses_invalid_caches_and_writes_nothing(tmp_path, model, text, message):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    store_dir = tmp_path / "store"
    with pytest.raises(InvalidCache, match=message) as e:
        import_cache(path, model, CacheStore(store_dir), required=NAMES, force=True)
    assert "\n" not in str(e.value)
    assert not store_dir.exists() or not list(store_dir.glob("*.cache"))


def test_a_partial_cache_needs_force_and_the_missing_tensors_are_listed(tmp_path, trt_cache, model):
    required = NAMES + ["gemm_in", "add_out"]
    with pytest.raises(InvalidCache, match="2 of 7 quantized tensors") as e:
        import_cache(trt_cache, model, CacheStore(tmp_path / "store"), required=required)
    assert "gemm_in" in str(e.value) and "add_out" in str(e.value) and "--force" in str(e.value)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.cache"))
    result = import_cache(trt_cache, model, CacheStore(tmp_path / "store"), required=required, force=True)
    assert result.missing == ["gemm_in", "add_out"] and result.path.is_file()


def test_export_rewrites_the_header_and_keeps_the_scales(tmp_path, trt_cache, model):
    imported = import_cache(trt_cache, model, CacheStore(tmp_path / "store")).path
    for version, header in (("10.3", "TRT-100300-EntropyCalibration2"), ("8.5.3", "TRT-8503-EntropyCalibration2"),
                            ("7.2.3", "TRT-7203-EntropyCalibration2")):
        out = tmp_path / f"export-{version}.cache"
        result = export_cache(imported, version, out)
        lines = out.read_text().splitlines()
        assert lines[0] == header == result.header and result.warnings == []
        assert lines[1:] == TRT_TEXT.splitlines()[1:]
        assert parse(out.read_text()).hex_scales == parse(TRT_TEXT).hex_scales


@pytest.mark.parametrize("hex_value", ["7fc00000", "ff800000", "bf800000", "00000001", "7f7fffff"])
def test_export_refuses_nan_inf_negative_subnormal_and_overflowing_caches(tmp_path, hex_value):
    path = tmp_path / "bad.cache"
    path.write_text(f"TRT-8601-EntropyCalibration2\na: 3c010a14\nb: {hex_value}\n")
    with pytest.raises(InvalidCache, match="nothing exported"):
        export_cache(path, "10.3", tmp_path / "out.cache")
    assert not (tmp_path / "out.cache").exists()


def test_export_refuses_versions_tensorrt_never_released(tmp_path, trt_cache):
    with pytest.raises(CalibError, match="99.99.99 is not a released TensorRT version"):
        export_cache(trt_cache, "99.99.99", tmp_path / "out.cache")
    assert not (tmp_path / "out.cache").exists()
    result = export_cache(trt_cache, "10.17.0", tmp_path / "out.cache", assume=True)
    assert result.header == "TRT-101700-EntropyCalibration2"
    assert len(result.warnings) == 1 and "10.17.0" in result.warnings[0]


def test_export_never_overwrites_a_file_calib_did_not_write(tmp_path, trt_cache):
    other = tmp_path / "existing.txt"
    other.write_text("precious\n")
    with pytest.raises(CalibError, match="calib did not write it"):
        export_cache(trt_cache, "10.3", other)
    assert other.read_text() == "precious\n"
    export_cache(trt_cache, "10.3", other, overwrite=True)
    assert other.read_text().startswith("TRT-100300-")
    # A previous export of the same scales is replaced without --overwrite.
    export_cache(trt_cache, "8.6.1", other)
    assert other.read_text() == TRT_TEXT


def test_export_refuses_its_source_a_folder_and_a_sidecar_named_file(tmp_path, trt_cache, model):
    with pytest.raises(CalibError, match="is the cache being exported"):
        export_cache(trt_cache, "10.3", trt_cache, overwrite=True)
    with pytest.raises(CalibError, match="is a folder"):
        export_cache(trt_cache, "10.3", tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(CalibError, match="model.json exists beside"):
        export_cache(trt_cache, "10.3", tmp_path / "model.cache")
    assert trt_cache.read_text() == TRT_TEXT
