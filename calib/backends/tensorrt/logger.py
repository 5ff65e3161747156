"""A TensorRT logger that prints warnings and keeps errors, so that calib can raise the first
error as its one-line message instead of printing a parser dump.

One logger per bindings module: TensorRT keeps the first logger registered in a process and
warns on every later Builder/Runtime made with another one. pybind11 trampolines need the
base initialised explicitly (`trt.ILogger.__init__(self)`).
"""

from __future__ import annotations

import sys
from types import ModuleType

_LOGGERS: dict[int, tuple[ModuleType, object]] = {}


def get_logger(trt: ModuleType, label: str = "TensorRT"):
    """The logger for `trt`, its kept errors cleared."""
    module, logger = _LOGGERS.get(id(trt), (None, None))
    if module is not trt:
        logger = _make(trt, label)
        _LOGGERS[id(trt)] = (trt, logger)
    logger.errors = []
    return logger


def _make(trt: ModuleType, label: str):
    severity = trt.ILogger.Severity
    errors = {severity.ERROR, severity.INTERNAL_ERROR}

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        @property
        def first_error(self) -> str:
            return self.errors[0] if self.errors else ""

        def log(self, level, msg) -> None:
            text = str(msg).strip()
            if level in errors:
                if text:
                    self.errors.append(text.splitlines()[0])
            elif level == severity.WARNING:
                print(f"[{label}] {text}", file=sys.stderr)

    return Logger()
