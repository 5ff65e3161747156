"""Name -> Q/DQ flavor: built-ins via @register_flavor, third parties via entry points.

The same arrangement as calibrators (`calib.calibrators.registry`): a third-party package
declares, in its own packaging metadata,

    [project.entry-points."calib.flavors"]
    openvino = "my_pkg.flavors:OpenVinoFlavor"

Entry points are listed (not imported) the first time the registry is asked; a plugin's module is
imported only when its name is requested, so a broken plugin cannot break the built-ins. Built-in
names win over plugins of the same name.
"""

from __future__ import annotations

import importlib.metadata
import warnings

from calib.errors import CalibError
from calib.quantize.flavor import Flavor

ENTRY_POINT_GROUP = "calib.flavors"

_builtins: dict[str, type[Flavor]] = {}
_plugin_points: dict[str, importlib.metadata.EntryPoint] | None = None
_plugin_classes: dict[str, type[Flavor]] = {}


def register_flavor(cls: type[Flavor]) -> type[Flavor]:
    """Class decorator: make a built-in flavor available under `cls.name`."""
    if not (isinstance(cls, type) and issubclass(cls, Flavor)):
        raise TypeError(f"@register_flavor expects a Flavor subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty string class attribute 'name'")
    if name in _builtins and _builtins[name] is not cls:
        raise TypeError(f"flavor name '{name}' is already registered by {_builtins[name].__name__}")
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
                warnings.warn(f"flavor plugin '{ep.name}' ({ep.value}) ignored: a built-in has that name",
                              stacklevel=3)
            elif ep.name not in found:  # first on sys.path wins, like imports
                found[ep.name] = ep
        _plugin_points = found
    return _plugin_points


def flavor_names() -> list[str]:
    """Sorted names of built-in and installed third-party flavors."""
    return sorted(set(_builtins) | set(_plugins()))


def flavor_class(name: str) -> type[Flavor]:
    """The class registered under `name`; imports a plugin on first use."""
    if name in _builtins:
        return _builtins[name]
    if name in _plugin_classes:
        return _plugin_classes[name]
    ep = _plugins().get(name)
    if ep is None:
        raise CalibError(f"unknown Q/DQ flavor '{name}' (choose from: {', '.join(flavor_names())})")
    try:
        cls = ep.load()
    except Exception as exc:  # a plugin may fail in any way; report it as one line
        raise CalibError(f"flavor plugin '{name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Flavor)):
        raise CalibError(f"flavor plugin '{name}' ({ep.value}) is not a calib.quantize.Flavor subclass")
    _plugin_classes[name] = cls
    return cls


def get_flavor(flavor: str | Flavor) -> Flavor:
    """The flavor `flavor` names (a Flavor instance is returned as it is)."""
    if isinstance(flavor, Flavor):
        return flavor
    if not isinstance(flavor, str):
        raise CalibError(f"a Q/DQ flavor is a name or a Flavor, got {type(flavor).__name__}")
    return flavor_class(flavor)()
