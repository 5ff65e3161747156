"""calib.backends.tensorrt.logger: one logger per bindings module; errors kept, warnings shown."""

from __future__ import annotations

from trt_fakes import FakeTrt

from calib.backends.tensorrt.logger import get_logger


def test_errors_are_kept_and_warnings_printed(capsys):
    fake = FakeTrt()
    severity = fake.ILogger.Severity
    logger = get_logger(fake, "TensorRT-RTX")
    logger.log(severity.INFO, "building")
    logger.log(severity.WARNING, "slow path")
    logger.log(severity.ERROR, "first problem\nwith a dump under it")
    logger.log(severity.INTERNAL_ERROR, "second problem")
    assert logger.errors == ["first problem", "second problem"]
    assert logger.first_error == "first problem" and logger.errors[-1] == "second problem"
    err = capsys.readouterr().err
    assert "[TensorRT-RTX] slow path" in err and "building" not in err and "problem" not in err


def test_one_logger_per_module_with_errors_cleared():
    fake = FakeTrt()
    first = get_logger(fake)
    first.log(fake.ILogger.Severity.ERROR, "old")
    again = get_logger(fake)
    assert again is first and again.errors == []
    assert get_logger(FakeTrt()) is not first
