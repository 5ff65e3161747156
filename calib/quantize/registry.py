"""Name -> Q/DQ flavor: built-ins via @register_flavor, third parties via entry points.

The same mechanism as calibrators and backends (calib.plugins): a third-party package declares,
in its own packaging metadata,

    [project.entry-points."calib.flavors"]
    openvino = "my_pkg.flavors:OpenVinoFlavor"
"""

from __future__ import annotations

from calib.errors import CalibError
from calib.plugins import Registry
from calib.quantize.flavor import Flavor

ENTRY_POINT_GROUP = "calib.flavors"

_registry: Registry[type[Flavor]] = Registry("Q/DQ flavor", Flavor, ENTRY_POINT_GROUP)


def register_flavor(cls: type[Flavor]) -> type[Flavor]:
    """Class decorator: make a built-in flavor available under `cls.name`."""
    return _registry.register(cls)


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    _registry.reload_plugins()


def flavor_names() -> list[str]:
    """Sorted names of built-in and installed third-party flavors."""
    return _registry.names()


def registered_flavor_names() -> list[str]:
    """The built-in flavors (and any registered in this process), without loading plug-ins."""
    return _registry.registered_names()


def flavor_class(name: str) -> type[Flavor]:
    """The class registered under `name`; imports a plugin on first use."""
    return _registry.get(name)


def get_flavor(flavor: str | Flavor) -> Flavor:
    """The flavor `flavor` names (a Flavor instance is returned as it is)."""
    if isinstance(flavor, Flavor):
        return flavor
    if not isinstance(flavor, str):
        raise CalibError(f"a Q/DQ flavor is a name or a Flavor, got {type(flavor).__name__}")
    return flavor_class(flavor)()
