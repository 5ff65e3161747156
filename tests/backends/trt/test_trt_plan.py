"""calib.backends.tensorrt.plan: build decisions from probed features, for TensorRT 8-, 10-, 11-like
APIs and TensorRT-RTX, never from version numbers."""

from __future__ import annotations

import dataclasses

import pytest

from calib.backends.tensorrt.plan import (COMPUTE_CAPABILITIES, DEFAULT_COMPUTE_CAPABILITY, BuildPlan,
                                          check_compute_capability, plan_build)
from calib.backends.tensorrt.probe import TENSORRT, TENSORRT_RTX, Features
from calib.errors import CalibError


def features(product=TENSORRT, version="10.3.0", weak=True, calibrators=True, implicit_batch=False,
             strongly_typed_flag=True, explicit_batch_flag=True, targets=()):
    network = {"STRONGLY_TYPED"} if strongly_typed_flag else set()
    if explicit_batch_flag:
        network.add("EXPLICIT_BATCH")
    return Features(product, version, frozenset(network),
                    frozenset({"TF32"} | ({"INT8", "FP16"} if weak else set())), implicit_batch,
                    calibrators, calibrators, True, tuple(targets))


TRT8 = features(version="8.6.1", implicit_batch=True, strongly_typed_flag=False)
TRT10 = features()
TRT11 = features(version="11.0.0", weak=False, calibrators=False)
RTX = features(TENSORRT_RTX, "1.7.1.116", weak=False, calibrators=False, explicit_batch_flag=False,
               targets=(75, 80, 86, 89, 120, 121))


def plan(f, precision, qdq=False, fp16=False, calibrator=False, cc=None) -> BuildPlan:
    return plan_build(f, precision, qdq, fp16, calibrator, cc)


@pytest.mark.parametrize("f, precision, qdq, fp16, calibrator, network, flags, strong, implicit", [
    (TRT10, "fp32", False, False, False, (), (), False, False),
    (TRT10, "fp16", False, False, False, (), ("FP16",), False, False),
    (TRT10, "fp32", False, True, False, (), ("FP16",), False, False),
    (TRT10, "int8", True, False, False, ("STRONGLY_TYPED",), (), True, False),
    (TRT10, "int8", True, True, False, (), ("INT8", "FP16"), False, False),
    (TRT10, "int8", False, False, True, (), ("INT8",), False, True),
    (TRT8, "int8", True, False, False, ("EXPLICIT_BATCH",), ("INT8",), False, False),
    (TRT8, "fp32", False, False, False, ("EXPLICIT_BATCH",), (), False, False),
    (TRT11, "fp32", False, False, False, (), (), True, False),
    (TRT11, "int8", True, False, False, (), (), True, False),
    (RTX, "fp32", False, False, False, (), (), True, False),
    (RTX, "int8", True, False, False, (), (), True, False),
])
def test_plan_flags(f, precision, qdq, fp16, calibrator, network, flags, strong, implicit):
    p = plan(f, precision, qdq, fp16, calibrator)
    assert (p.network_flags, p.builder_flags, p.strongly_typed, p.implicit_int8) == (network, flags, strong, implicit)
    assert f.display in p.description


def test_decisions_follow_features_not_version_numbers():
    # The same API under any version string plans the same build; TensorRT-RTX 1.7 is not "TensorRT 1".
    for f in (TRT8, TRT10, TRT11, RTX):
        for version in ("1.7.1.116", "8.6.1", "10.3.0", "11.4.0"):
            other = dataclasses.replace(f, version=version)
            for args in (("fp32",), ("int8", True)):
                a, b = plan(f, *args), plan(other, *args)
                assert dataclasses.replace(a, description="") == dataclasses.replace(b, description="")
    assert "EXPLICIT_BATCH" not in plan(RTX, "int8", True).network_flags


def test_timing_cache_and_targets():
    assert plan(TRT10, "fp32").timing_cache and plan(TRT11, "int8", True).timing_cache
    rtx = plan(RTX, "int8", True)
    assert not rtx.timing_cache                      # would force a GPU query in an AOT build
    assert rtx.compute_capability == DEFAULT_COMPUTE_CAPABILITY == 89
    assert "SM89 target" in rtx.description
    for cc in COMPUTE_CAPABILITIES:
        assert plan(RTX, "fp32", cc=cc).compute_capability == cc
    assert plan(TRT10, "fp32").compute_capability is None


@pytest.mark.parametrize("value", [90, 75, 0, "sm89", 8.9, True, None, "120x"])
def test_unknown_compute_capability_lists_the_choices(value):
    with pytest.raises(CalibError, match=r"unknown compute capability .*\(choose from: 86, 89, 120\)") as info:
        check_compute_capability(value)
    assert "\n" not in str(info.value)


def test_compute_capability_checks():
    assert check_compute_capability("120") == 120
    with pytest.raises(CalibError, match="unknown compute capability 90"):
        plan(RTX, "fp32", cc=90)
    with pytest.raises(CalibError, match="has no SM120 target"):
        plan(dataclasses.replace(RTX, compute_capabilities=(86, 89)), "fp32", cc=120)
    with pytest.raises(CalibError, match="applies to --backend tensorrt-rtx only"):
        plan(TRT10, "fp32", cc=89)


@pytest.mark.parametrize("f, precision, qdq, fp16, calibrator, message", [
    (TRT11, "int8", False, False, True, r"no implicit INT8 calibration.*--qdq-flavor tensorrt"),
    (TRT11, "int8", False, False, False, "no implicit INT8 calibration"),
    (TRT11, "int8", True, False, True, "no implicit INT8 calibration"),
    (TRT11, "fp16", False, False, False, "no FP16 builder flag.*autocast"),
    (TRT11, "int8", True, True, False, "no FP16 builder flag"),
    (RTX, "int8", False, False, False, r"TensorRT-RTX 1.7.1.116 has no implicit INT8.*--qdq-flavor tensorrt"),
    (RTX, "int8", False, False, True, r"no implicit INT8.*--qdq-flavor tensorrt"),
    (RTX, "fp16", False, False, False, "TensorRT-RTX 1.7.1.116 has no FP16 builder flag"),
    (TRT10, "int8", False, False, False, r"no Q/DQ nodes.*--qdq-flavor tensorrt"),
    (TRT10, "int8", True, False, True, "already has Q/DQ nodes"),
    (TRT10, "fp32", True, False, False, "build it with precision int8"),
    (TRT10, "fp32", False, False, True, "only to precision int8"),
    (TRT10, "bf16", False, False, False, "unknown precision"),
    (features(calibrators=False), "int8", False, False, True, r"no INT8 calibrators.*--qdq-flavor tensorrt"),
])
def test_plan_errors_are_one_line(f, precision, qdq, fp16, calibrator, message):
    with pytest.raises(CalibError, match=message) as info:
        plan(f, precision, qdq, fp16, calibrator)
    assert "\n" not in str(info.value)
    assert "--flavor " not in str(info.value)   # calib's option is --qdq-flavor
