"""Name -> calibrator class: built-ins via @register, third parties via the `calib.calibrators`
entry-point group (the mechanism, shared with flavors and backends: calib.plugins)."""

from __future__ import annotations

from typing import Any

from calib.plugins import Registry

from .base import Calibrator
from .statistics import TensorStatistics

ENTRY_POINT_GROUP = "calib.calibrators"

_registry: Registry[type[Calibrator]] = Registry("calibrator", Calibrator, ENTRY_POINT_GROUP)


def register(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: make a built-in calibrator available under `cls.name`."""
    return _registry.register(cls)


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    _registry.reload_plugins()


def available_calibrators() -> list[str]:
    """Sorted names of built-in and installed third-party calibrators."""
    return _registry.names()


def calibrator_class(name: str) -> type[Calibrator]:
    """The class registered under `name`; imports a plugin on first use."""
    return _registry.get(name)


def params_for(name: str, params: dict) -> dict:
    """The subset of command-line calibrator parameters that `name` accepts (--percentile applies
    to the percentile calibrator only)."""
    accepted = calibrator_class(name).defaults
    return {k: v for k, v in params.items() if k in accepted}


def get_calibrator(name: str, stats: TensorStatistics | None = None, **params: Any) -> Calibrator:
    """A new calibrator `name` reading `stats` (a fresh TensorStatistics when None)."""
    return calibrator_class(name)(stats, **params)
