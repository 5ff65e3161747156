"""Name -> backend class: built-ins loaded lazily, third parties via entry points.

The mechanism is calib.plugins (shared with calibrators and flavors). Built-ins are named by
"module:Class" strings, so that asking for `ort` never imports TensorRT, and
`tensorrt`/`tensorrt-rtx` import their Python bindings only when the backend is constructed. A
third-party package declares, in its own packaging metadata,

    [project.entry-points."calib.backends"]
    openvino = "my_pkg.calib_backend:OpenVinoBackend"
"""

from __future__ import annotations

import inspect
from typing import Any

from calib.errors import CalibError
from calib.plugins import Registry

from .base import Backend

ENTRY_POINT_GROUP = "calib.backends"

# Built-in name -> "module:Class", imported on first use.
_BUILTIN_SPECS: dict[str, str] = {
    "ort": "calib.backends.ort:OrtBackend",
    "tensorrt": "calib.backends.tensorrt:TensorRTBackend",
    "tensorrt-rtx": "calib.backends.tensorrt:TensorRTRTXBackend",
}
BUILTINS: tuple[str, ...] = tuple(_BUILTIN_SPECS)

_registry: Registry[type[Backend]] = Registry("backend", Backend, ENTRY_POINT_GROUP, ("name", "qdq_flavor"),
                                              lazy=_BUILTIN_SPECS)


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available under `cls.name` in this process."""
    return _registry.register(cls)


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    _registry.reload_plugins()


def backend_names() -> list[str]:
    """Built-in names first (in their fixed order), then registered and plugin names, sorted."""
    return _registry.names()


def backend_class(name: str) -> type[Backend]:
    """The class registered under `name`; imports its module on first use (never the
    TensorRT bindings: those are imported when the backend is constructed)."""
    return _registry.get(name)


def get_backend(name: str, **options: Any) -> Backend:
    """A new backend `name`, constructed with `options` (a missing optional dependency raises
    calib.errors.MissingDependency here, in one line)."""
    cls = backend_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise CalibError(f"backend '{name}': {e}") from None
    return cls(**options)
