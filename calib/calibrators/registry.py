"""Name -> calibrator class: built-ins via @register, third parties via entry points.

A third-party package declares, in its own packaging metadata,

    [project.entry-points."calib.calibrators"]
    kl_smooth = "my_pkg.calib:KLSmoothCalibrator"

Entry points are listed (not imported) the first time the registry is asked; a plugin's module
is imported only when its name is requested, so a broken plugin cannot break the built-ins.
Built-in names win over plugins of the same name.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

from calib.errors import CalibError

from .base import Calibrator
from .statistics import TensorStatistics

ENTRY_POINT_GROUP = "calib.calibrators"

_builtins: dict[str, type[Calibrator]] = {}
_plugin_points: dict[str, importlib.metadata.EntryPoint] | None = None
_plugin_classes: dict[str, type[Calibrator]] = {}


def register(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: make a built-in calibrator available under `cls.name`."""
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise TypeError(f"@register expects a Calibrator subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty string class attribute 'name'")
    if name in _builtins and _builtins[name] is not cls:
        raise TypeError(f"calibrator name '{name}' is already registered by {_builtins[name].__name__}")
    _builtins[name] = cls
    return cls


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    global _plugin_points
    _plugin_points = None
    _plugin_classes.clear()


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    global _plugin_points
    if _plugin_points is None:
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _builtins:
                warnings.warn(f"calibrator plugin '{ep.name}' ({ep.value}) ignored: a built-in has that name",
                              stacklevel=3)
            elif ep.name not in found:  # first on sys.path wins, like imports
                found[ep.name] = ep
        _plugin_points = found
    return _plugin_points


def available_calibrators() -> list[str]:
    """Sorted names of built-in and installed third-party calibrators."""
    return sorted(set(_builtins) | set(_plugins()))


def calibrator_class(name: str) -> type[Calibrator]:
    """The class registered under `name`; imports a plugin on first use."""
    if name in _builtins:
        return _builtins[name]
    if name in _plugin_classes:
        return _plugin_classes[name]
    ep = _plugins().get(name)
    if ep is None:
        raise CalibError(f"unknown calibrator '{name}' (available: {', '.join(available_calibrators())})")
    try:
        cls = ep.load()
    except Exception as exc:  # a plugin may fail in any way; report it as one line
        raise CalibError(f"calibrator plugin '{name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise CalibError(f"calibrator plugin '{name}' ({ep.value}) is not a calib.calibrators.Calibrator subclass")
    _plugin_classes[name] = cls
    return cls


def get_calibrator(name: str, stats: TensorStatistics | None = None, **params: Any) -> Calibrator:
    """A new calibrator `name` reading `stats` (a fresh TensorStatistics when None)."""
    return calibrator_class(name)(stats, **params)
