"""Name -> class registries for calib's pluggable things (calibrators, Q/DQ flavors, backends):
one mechanism, one instance per kind, each in its own package's `registry.py`.

Built-ins register with a class decorator, or are named by a "module:Class" string and imported on
first use (so asking for `ort` never imports TensorRT). A third-party package declares, in its own
packaging metadata, an entry point in the kind's group, e.g.

    [project.entry-points."calib.calibrators"]
    kl_smooth = "my_pkg.calib:KLSmoothCalibrator"

Entry points are listed (not imported) the first time the registry is asked; a plugin's module is
imported only when its name is requested, so a broken plugin cannot break the built-ins, and a
plugin that fails to load is one line. Built-in names win over plugins of the same name. The
arrangement follows Python's entry-point plugins as pytest and Polygraphy use them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Any, Generic, TypeVar

from calib.errors import CalibError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """`kind` names the things in messages ("calibrator", "Q/DQ flavor", "backend"); `base` is the
    class every entry must subclass; `attrs` the non-empty string class attributes it must have;
    `lazy` maps built-in names to "module:Class", imported on first use (listed first, in order)."""

    def __init__(self, kind: str, base: type, group: str, attrs: tuple[str, ...] = ("name",),
                 lazy: dict[str, str] | None = None):
        self.kind, self.base, self.group, self.attrs = kind, base, group, attrs
        self.lazy = dict(lazy or {})
        self._registered: dict[str, T] = {}
        self._loaded: dict[str, T] = {}
        self._points: dict[str, importlib.metadata.EntryPoint] | None = None

    def _problem(self, cls: Any) -> str | None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            return f"is not a {self.base.__module__.rsplit('.', 1)[0]}.{self.base.__name__} subclass"
        for attr in self.attrs:
            value = getattr(cls, attr, None)
            if not isinstance(value, str) or not value:
                return f"needs a non-empty string class attribute '{attr}'"
        return None

    def register(self, cls: T) -> T:
        """Class decorator: make `cls` available under `cls.name`."""
        problem = self._problem(cls)
        if problem:
            raise TypeError(f"{getattr(cls, '__name__', cls)!r} {problem}")
        name = cls.name
        if name in self.lazy or (name in self._registered and self._registered[name] is not cls):
            raise TypeError(f"{self.kind} name '{name}' is already registered")
        self._registered[name] = cls
        return cls

    def reload_plugins(self) -> None:
        """Forget discovered entry points; the next query scans them again."""
        self._points = None
        self._loaded = {n: c for n, c in self._loaded.items() if n in self.lazy}

    def _plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._points is None:
            found: dict[str, importlib.metadata.EntryPoint] = {}
            for ep in importlib.metadata.entry_points(group=self.group):
                if ep.name in self.lazy or ep.name in self._registered:
                    warnings.warn(f"{self.kind} plugin '{ep.name}' ({ep.value}) ignored: a built-in has that name",
                                  stacklevel=4)
                elif ep.name not in found:  # first on sys.path wins, like imports
                    found[ep.name] = ep
            self._points = found
        return self._points

    def registered_names(self) -> list[str]:
        """Built-ins and in-process registrations, without looking at entry points."""
        return [*self.lazy, *sorted(set(self._registered) - set(self.lazy))]

    def names(self) -> list[str]:
        """The lazily imported built-ins in their order, then every other name, sorted."""
        others = sorted((set(self._registered) | set(self._plugins())) - set(self.lazy))
        return [*self.lazy, *others]

    def get(self, name: str) -> T:
        """The class registered under `name`; imports its module on first use."""
        if name in self._registered:
            return self._registered[name]
        if name in self._loaded:
            return self._loaded[name]
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            cls = getattr(importlib.import_module(module), attr)
        else:
            ep = self._plugins().get(name)
            if ep is None:
                raise CalibError(f"unknown {self.kind} '{name}' (choose from: {', '.join(self.names())})")
            try:
                cls = ep.load()
            except Exception as exc:  # a plugin may fail in any way; report it as one line
                raise CalibError(f"{self.kind} plugin '{name}' ({ep.value}) failed to load: "
                                 f"{type(exc).__name__}: {exc}") from exc
            problem = self._problem(cls)
            if problem:
                raise CalibError(f"{self.kind} plugin '{name}' ({ep.value}) {problem}")
        self._loaded[name] = cls
        return cls
