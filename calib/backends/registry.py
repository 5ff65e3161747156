"""Name -> backend class: built-ins loaded lazily, third parties via entry points.

Modelled on calib/calibrators/registry.py. Built-ins are named by "module:Class" strings, so
that asking for `ort` never imports TensorRT, and `tensorrt`/`tensorrt-rtx` import their
Python bindings only when the backend is constructed. A third-party package declares, in its
own packaging metadata,

    [project.entry-points."calib.backends"]
    openvino = "my_pkg.calib_backend:OpenVinoBackend"

Entry points are listed (not imported) the first time the registry is asked; a plugin's module
is imported only when its name is requested, so a broken plugin cannot break the built-ins.
Built-in names win over plugins of the same name.
"""

from __future__ import annotations

import importlib
import inspect
import importlib.metadata
import warnings
from typing import Any

from calib.errors import CalibError

from .base import Backend

ENTRY_POINT_GROUP = "calib.backends"

# Built-in name -> "module:Class", imported on first use.
_BUILTIN_SPECS: dict[str, str] = {
    "ort": "calib.backends.ort:OrtBackend",
    "tensorrt": "calib.backends.tensorrt:TensorRTBackend",
    "tensorrt-rtx": "calib.backends.tensorrt:TensorRTRTXBackend",
}
BUILTINS: tuple[str, ...] = tuple(_BUILTIN_SPECS)

_classes: dict[str, type[Backend]] = {}       # built-ins and plugins already imported
_registered: dict[str, type[Backend]] = {}    # added in-process through register()
_plugin_points: dict[str, importlib.metadata.EntryPoint] | None = None


def _check_class(cls: Any, where: str) -> type[Backend]:
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise CalibError(f"{where} is not a calib.backends.Backend subclass")
    for attr in ("name", "qdq_flavor"):
        value = getattr(cls, attr, None)
        if not isinstance(value, str) or not value:
            raise CalibError(f"{where} needs a non-empty string class attribute '{attr}'")
    return cls


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available under `cls.name` in this process."""
    try:
        _check_class(cls, repr(cls))
    except CalibError as e:
        raise TypeError(str(e)) from None
    if cls.name in _BUILTIN_SPECS or (cls.name in _registered and _registered[cls.name] is not cls):
        raise TypeError(f"backend name '{cls.name}' is already registered")
    _registered[cls.name] = cls
    return cls


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    global _plugin_points
    _plugin_points = None
    for name in [n for n in _classes if n not in _BUILTIN_SPECS]:
        del _classes[name]


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    global _plugin_points
    if _plugin_points is None:
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _BUILTIN_SPECS:
                warnings.warn(f"backend plugin '{ep.name}' ({ep.value}) ignored: a built-in has that name",
                              stacklevel=3)
            elif ep.name not in found:  # first on sys.path wins, like imports
                found[ep.name] = ep
        _plugin_points = found
    return _plugin_points


def backend_names() -> list[str]:
    """Built-in names first (in their fixed order), then registered and plugin names, sorted."""
    extra = sorted((set(_registered) | set(_plugins())) - set(_BUILTIN_SPECS))
    return [*BUILTINS, *extra]


def backend_class(name: str) -> type[Backend]:
    """The class registered under `name`; imports its module on first use (never the
    TensorRT bindings: those are imported when the backend is constructed)."""
    if name in _classes:
        return _classes[name]
    if name in _BUILTIN_SPECS:
        module, _, attr = _BUILTIN_SPECS[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    elif name in _registered:
        cls = _registered[name]
    else:
        ep = _plugins().get(name)
        if ep is None:
            raise CalibError(f"unknown backend '{name}' (choose from: {', '.join(backend_names())})")
        try:
            cls = ep.load()
        except Exception as exc:  # a plugin may fail in any way; report it as one line
            raise CalibError(f"backend plugin '{name}' ({ep.value}) failed to load: "
                             f"{type(exc).__name__}: {exc}") from exc
        cls = _check_class(cls, f"backend plugin '{name}' ({ep.value})")
    _classes[name] = cls
    return cls


def get_backend(name: str, **options: Any) -> Backend:
    """A new backend `name`, constructed with `options` (a missing optional dependency raises
    calib.errors.MissingDependency here, in one line)."""
    cls = backend_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise CalibError(f"backend '{name}': {e}") from None
    return cls(**options)
