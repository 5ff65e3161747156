"""calib.backends.registry: built-in backends by name (loaded lazily), plug-ins by entry point."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from calib.backends import BACKENDS, Backend, backend_class, backend_names, get_backend, registry
from calib.backends.ort import OrtBackend
from calib.errors import CalibError

REPO = Path(__file__).resolve().parents[2]


class ToyBackend(Backend):
    name = "toy"
    qdq_flavor = "ort"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def build(self, onnx_path, out, precision="fp32", **options):
        return out

    def load(self, artifact):
        raise NotImplementedError


@pytest.fixture
def entry_points(monkeypatch):
    """Pretend these (name, value) entry points are installed in group calib.backends."""
    def install(*pairs):
        points = [importlib.metadata.EntryPoint(n, v, registry.ENTRY_POINT_GROUP) for n, v in pairs]
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group: points if group == registry.ENTRY_POINT_GROUP else [])
        registry.reload_plugins()
    yield install
    monkeypatch.undo()
    registry.reload_plugins()


def test_builtins():
    assert BACKENDS == ("ort", "tensorrt", "tensorrt-rtx")
    assert backend_names()[:3] == list(BACKENDS)
    for name in BACKENDS:
        cls = backend_class(name)         # importing the class imports no TensorRT bindings
        assert cls.name == name and cls.qdq_flavor in ("ort", "tensorrt")
    assert backend_class("tensorrt").qdq_flavor == backend_class("tensorrt-rtx").qdq_flavor == "tensorrt"
    ort = get_backend("ort")
    assert isinstance(ort, OrtBackend) and ort.qdq_flavor == "ort" and ort.can_run() == (True, "")


def test_unknown_name_lists_the_choices():
    with pytest.raises(CalibError) as info:
        get_backend("tensorrt11")
    assert str(info.value) == "unknown backend 'tensorrt11' (choose from: ort, tensorrt, tensorrt-rtx)"


def test_bad_options_are_one_line():
    with pytest.raises(CalibError, match="backend 'ort': .*unexpected keyword argument 'threads'"):
        get_backend("ort", threads=2)


def test_nothing_imports_tensorrt_until_a_backend_is_made():
    code = ("import sys; import calib.backends as b; b.get_backend('ort'); b.backend_class('tensorrt-rtx'); "
            "b.backend_class('tensorrt'); "
            "print(sorted(m for m in ('tensorrt', 'tensorrt_rtx', 'tensorrt_rtx_bindings') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_by_entry_point(entry_points):
    entry_points(("toy", f"{__name__}:ToyBackend"))
    assert "toy" in backend_names() and backend_names()[:3] == list(BACKENDS)
    toy = get_backend("toy", threads=3)
    assert isinstance(toy, ToyBackend) and toy.threads == 3


def test_broken_plugins_are_one_line(entry_points):
    entry_points(("broken", "no_such_module_here:Thing"), ("notabackend", "pathlib:Path"))
    with pytest.raises(CalibError, match=r"backend plugin 'broken' \(no_such_module_here:Thing\) failed to load: "
                                         r"ModuleNotFoundError") as info:
        get_backend("broken")
    assert "\n" not in str(info.value)
    with pytest.raises(CalibError, match="is not a calib.backends.Backend subclass"):
        get_backend("notabackend")
    assert get_backend("ort").name == "ort"              # the built-ins still work


def test_plugin_cannot_shadow_a_builtin(entry_points):
    with pytest.warns(UserWarning, match="backend plugin 'ort' .* ignored"):
        entry_points(("ort", f"{__name__}:ToyBackend"))
        names = backend_names()
    assert names.count("ort") == 1 and isinstance(get_backend("ort"), OrtBackend)


def test_register_checks_the_class():
    class Nameless(ToyBackend):
        name = ""

    with pytest.raises(TypeError, match="non-empty string class attribute 'name'"):
        registry.register(Nameless)
    with pytest.raises(TypeError, match="already registered"):
        registry.register(type("Ort2", (ToyBackend,), {"name": "ort"}))
