"""The one validation every use of a cache goes through: each rule, and the typed error."""

import json
import struct

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calib.cache import (CacheKey, CacheMetadata, CacheStore, InvalidCache, ModelRequirements, TrtCache, load_cache,
                         load_valid_cache, validate_entry)
from calib.cache.inspect import validate
from calib.cache.validate import MAX_SCALE, MIN_SCALE, scale_problem
from calib.errors import CalibError

SCALES = {"input": 0.5, "conv:out": 0.25, "add out": 0.125}


def _meta(scales=SCALES, algorithm="EntropyCalibration2", trt_version="10.3.0") -> CacheMetadata:
    key = CacheKey("a" * 64, {"name": "p"}, "imagenet-val", "f" * 64, "entropy", {})
    return CacheMetadata(key=key, model_name="m", model_inputs=[], dataset_description="test", samples=10,
                         skipped=0, batch_size=4, trt_version=trt_version, algorithm=algorithm,
                         tensors={n: {"scale": s, "amax": s * 127, "min": -1, "max": 1, "nonfinite": 0}
                                  for n, s in scales.items()})


@pytest.fixture()
def saved(tmp_path):
    return CacheStore(tmp_path).save(TrtCache.from_scales(SCALES, "EntropyCalibration2"), _meta())


def _set_hex(path, tensor, hex_value):
    lines = path.read_text().splitlines()
    lines = [f"{tensor}: {hex_value}" if line.rpartition(":")[0] == tensor else line for line in lines]
    path.write_text("\n".join(lines) + "\n")


def _set_pair(path, tensor, hex_value):
    """Set one scale in the text and in the sidecar, so only the scale itself is wrong."""
    _set_hex(path, tensor, hex_value)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["tensors"][tensor]["scale"] = float(TrtCache("x", 1, {"t": hex_value}).scales["t"])
    side.write_text(json.dumps(meta))


def test_a_saved_cache_is_valid(saved):
    v = validate_entry(load_cache(saved), required=list(SCALES), model_sha256="a" * 64)
    assert v.ok and v.problems() == [] and v.tensor is None


@pytest.mark.parametrize("hex_value,shown", [("7fc00000", "nan"), ("7f800000", "inf"), ("ff800000", "-inf"),
                                             ("bd418306", "-0.0472"), ("00000000", "= 0"), ("80000000", "-0")])
def test_non_finite_zero_and_negative_scales_are_invalid(saved, hex_value, shown):
    _set_pair(saved, "conv:out", hex_value)
    v = validate_entry(load_cache(saved))
    assert not v.ok and v.bad_scales == ["conv:out"] and v.sidecar == []
    assert v.tensor == "conv:out" and shown in v.problems()[-1]
    with pytest.raises(InvalidCache, match="conv:out") as e:
        load_valid_cache(saved)
    assert e.value.tensor == "conv:out" and "\n" not in str(e.value)


# Issue 22 row 1: scales that are finite and positive, yet no int8 scale: a subnormal one has no
# normal reciprocal (x/scale overflows), FLT_MAX's amax = scale*127 overflows float32.
EXTREMES = [("00000001", "1.4013e-45", "subnormal"), ("007fffff", "1.17549e-38", "subnormal"),
            ("7f7fffff", "3.40282e+38", "amax = scale*127 overflows"),
            ("7c010204", "2.67939e+36", "amax = scale*127 overflows")]   # the first float32 past FLT_MAX/127


@pytest.mark.parametrize("hex_value,shown,problem", EXTREMES)
def test_subnormal_and_overflowing_scales_are_invalid(saved, hex_value, shown, problem):
    _set_pair(saved, "conv:out", hex_value)
    v = validate_entry(load_cache(saved))
    assert not v.ok and v.bad_scales == ["conv:out"] and v.sidecar == [] and v.tensor == "conv:out"
    assert f"'conv:out' = {shown} ({problem}" in v.problems()[-1]
    with pytest.raises(InvalidCache, match="conv:out") as e:
        load_valid_cache(saved)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("hex_value", ["00800000", "7c010203"])   # the smallest and the largest valid scale
def test_the_extreme_valid_scales(tmp_path, hex_value):
    scale = TrtCache("x", 1, {"t": hex_value}).scales["t"]
    assert scale in (MIN_SCALE, MAX_SCALE) and scale_problem(scale) is None
    path = CacheStore(tmp_path).save(TrtCache("MinMaxCalibration", 100300, {"t": hex_value}),
                                     _meta({"t": scale}, "MinMaxCalibration"))
    assert validate_entry(load_cache(path)).ok


def _valid_in_float32_arithmetic(scale: float) -> bool:
    """The rule, computed independently: numpy float32 arithmetic, as a Q/DQ runtime does it."""
    s = np.float32(scale)
    if not (np.isfinite(s) and s > 0):
        return False
    tiny = np.finfo(np.float32).tiny
    with np.errstate(over="ignore", divide="ignore"):
        amax, recip = s * np.float32(127), np.float32(1) / s
    return bool(s >= tiny and np.isfinite(amax) and amax >= tiny and np.isfinite(recip) and recip >= tiny)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
@example(0x00800000)
@example(0x007FFFFF)
@example(0x7C010203)
@example(0x7C010204)
@example(0x7F7FFFFF)
def test_the_scale_rule_is_float32_arithmetic(bits):
    scale = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
    assert (scale_problem(scale) is None) == _valid_in_float32_arithmetic(scale)


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0.0, allow_infinity=False, allow_nan=False) | st.sampled_from([0.0, 1e-45, 1e-40, 3e38]))
def test_calibration_never_writes_a_scale_readers_refuse(amax):
    # The writer (calibration and every Q/DQ flavor) clamps into the rule the readers apply.
    from calib.quantize.qdq import activation_scale

    for levels in (127, 255):
        assert scale_problem(activation_scale(amax, levels)) is None
    assert activation_scale(0.0, 127) == MIN_SCALE == float(np.finfo(np.float32).tiny)  # an all-zero tensor
    assert activation_scale(1.0, 127) == float(np.float32(1.0 / 127))                     # ordinary ones unchanged


def test_a_scale_edited_in_the_text_disagrees_with_the_sidecar(saved):
    _set_hex(saved, "add out", "3e000001")  # finite and positive: only the sidecar can tell
    v = validate_entry(load_cache(saved))
    assert not v.ok and v.bad_scales == [] and v.tensor == "add out"
    assert "differ from sidecar" in v.problems()[0]


def test_tensor_sets_algorithm_and_version_must_agree_with_the_sidecar(saved):
    text = saved.read_text()
    saved.write_text(text + "extra: 3f800000\n")
    assert "disagree on 1 tensor" in " ".join(validate_entry(load_cache(saved)).problems())
    saved.write_text(text.replace("EntropyCalibration2", "MinMaxCalibration"))
    assert "algorithm" in " ".join(validate_entry(load_cache(saved)).problems())
    saved.write_text(text.replace("TRT-100300", "TRT-8601"))
    assert "TensorRT 10.3.0" in " ".join(validate_entry(load_cache(saved)).problems())


@pytest.mark.parametrize("text,problem", [
    ("TRT-100300-EntropyCalibration2\n", "no scales"),
    ("TRT-100300-FancyCalibration\nt: 3f800000\n", "TensorRT does not have"),
    ("TRT-12345-EntropyCalibration2\nt: 3f800000\n", "not a TensorRT version number"),
])
def test_bad_headers_and_header_only_files(tmp_path, text, problem):
    path = tmp_path / "bare.cache"
    path.write_text(text)
    v = validate_entry(load_cache(path))
    assert not v.ok and problem in " ".join(v.problems())


def test_missing_quantized_tensors_with_required(saved):
    v = validate_entry(load_cache(saved), required=["input", "conv:out", "gemm in", "other"])
    assert not v.ok and v.missing == ["gemm in", "other"] and v.tensor == "gemm in"
    assert "2 quantized tensor(s) have no scale" in v.problems()[-1]
    with pytest.raises(InvalidCache, match="gemm in"):
        load_valid_cache(saved, required=["input", "gemm in"])
    assert validate_entry(load_cache(saved)).ok  # without `required`, nothing is required


def test_model_hash_and_the_old_signature(saved):
    v = validate(load_cache(saved), "b" * 64, ["input"], ["input", "conv:out"])
    assert not v.hash_matches and not v.ok and v.extra == ["add out"]
    assert validate(load_cache(saved), "a" * 64, list(SCALES), list(SCALES)).ok


def test_load_cache_still_reads_a_broken_cache_for_inspection(saved):
    _set_hex(saved, "input", "7fc00000")
    entry = load_cache(saved)           # cache show / diff
    assert entry.cache.hex_scales["input"] == "7fc00000"
    with pytest.raises(InvalidCache, match="--recalibrate"):
        load_valid_cache(saved, advice="--recalibrate replaces it")


def test_invalid_cache_is_a_calib_error_with_one_line(saved):
    _set_hex(saved, "input", "ff800000")
    with pytest.raises(CalibError) as e:
        load_valid_cache(saved)
    assert isinstance(e.value, InvalidCache) and str(saved) in str(e.value) and "\n" not in str(e.value)


# -- one validation on every path (issue 22 rows 1 and 2) ----------------------------------------
# The same pair, handed to every command that uses a cache: reuse (CacheStore.find, what `calib
# run` does), verify, build, export (given the model) and import must all accept it, or all refuse.

PATH_CASES = {"valid": None, "missing-one-tensor": "drop", "subnormal": "00000001", "flt-max": "7f7fffff",
              "nan": "7fc00000", "negative": "bf800000"}


@pytest.fixture()
def tiny(tiny_classifier):
    from calib.commands.build import cache_requirements
    from calib.models import prepared_model, resolve_model

    model = resolve_model(str(tiny_classifier))
    prepared = prepared_model(model)
    return model, prepared, cache_requirements(model, prepared, "tensorrt")


def _pair_for(tmp_path, model, needs, case):
    """A calib pair for `model` (every quantized tensor at scale 0.01), then edited as `case` says
    in the text and the sidecar alike."""
    names = list(needs.required)
    scales = {n: float(np.float32(0.01)) for n in names}
    meta = _meta(scales)
    meta.key = CacheKey(model.sha256, {"name": "p"}, "imagenet-val", "f" * 64, "entropy", {})
    path = CacheStore(tmp_path / "store").save(TrtCache.from_scales(scales, "EntropyCalibration2"), meta)
    edit = PATH_CASES[case]
    if edit == "drop":
        lines = path.read_text().splitlines()
        path.write_text("\n".join(line for line in lines if line.rpartition(":")[0] != names[-1]) + "\n")
        side = json.loads(path.with_suffix(".json").read_text())
        del side["tensors"][names[-1]]
        path.with_suffix(".json").write_text(json.dumps(side))
    elif edit is not None:
        _set_pair(path, names[0], edit)
    return path, meta.key


def _verdicts(tmp_path, model, prepared, needs, path, key):
    from calib.cache.interop import export_cache, import_cache
    from calib.commands.build import build_from_cache, check_cache

    def accepted(call):
        try:
            call()
        except InvalidCache as e:
            assert "\n" not in str(e)
            return False
        except CalibError as e:   # build's own wording for a missing tensor or another model
            assert "\n" not in str(e) and "--force" in str(e)
            return False
        return True

    return {
        "reuse": accepted(lambda: CacheStore(path.parent).find(key, required=list(needs.required))),
        "verify": check_cache(model, prepared, path, "tensorrt")[1].ok,
        "build": accepted(lambda: build_from_cache(model, prepared, path, "tensorrt", tmp_path / "int8.onnx")),
        "export": accepted(lambda: export_cache(path, "10.3", tmp_path / "out.cache", model=needs)),
        "import": accepted(lambda: import_cache(path, model, CacheStore(tmp_path / "imported"),
                                                required=list(needs.required))),
    }


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_every_path_gives_the_same_verdict(tmp_path, tiny, case):
    model, prepared, needs = tiny
    path, key = _pair_for(tmp_path, model, needs, case)
    verdicts = _verdicts(tmp_path, model, prepared, needs, path, key)
    assert verdicts == {k: case == "valid" for k in verdicts}, verdicts
    if case != "valid":   # a refusal writes nothing
        assert not (tmp_path / "out.cache").exists() and not (tmp_path / "int8.onnx").exists()
        assert not (tmp_path / "imported").exists() or not list((tmp_path / "imported").glob("*.cache"))


def test_export_given_the_model_refuses_what_verify_refuses(tmp_path, tiny):
    """Issue 22 row 2: a cache missing one quantized tensor's scale was exported with exit 0 while
    `cache verify` rejected it; and a cache calibrated for another model."""
    from calib.cache.interop import export_cache
    from calib.commands.build import check_cache

    model, prepared, needs = tiny
    path, _ = _pair_for(tmp_path, model, needs, "missing-one-tensor")
    with pytest.raises(InvalidCache, match="1 quantized tensor.s. have no scale") as e:
        export_cache(path, "10.3", tmp_path / "out.cache", model=needs)
    assert e.value.tensor == needs.required[-1] and "nothing exported" in str(e.value)
    assert e.value.problems == check_cache(model, prepared, path, "tensorrt")[1].problems()
    assert not (tmp_path / "out.cache").exists()
    other = ModelRequirements("other", "b" * 64, needs.required)
    path, _ = _pair_for(tmp_path / "2", model, needs, "valid")
    with pytest.raises(InvalidCache, match="calibrated for another model"):
        export_cache(path, "10.3", tmp_path / "out.cache", model=other)
    assert export_cache(path, "10.3", tmp_path / "out.cache", model=needs).path.is_file()
