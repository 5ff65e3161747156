"""calib.cli.defaults: every option's default is read from the library (a RunConfig field, a command
function's parameter) without importing it, and equals what importing it gives; the CLI restates
no default the library declares."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from calib.cli import app, cache_app
from calib.cli.defaults import Default, NotLiteral, _from_import, _from_source, library_default

CLI = Path(__file__).resolve().parents[2] / "calib" / "cli"


def commands():
    for typer_app, prefix in ((app, ""), (cache_app, "cache ")):
        for info in typer_app.registered_commands:
            yield prefix + (info.name or info.callback.__name__), info.callback


def test_every_library_default_reads_the_same_from_the_source_as_by_import():
    checked = 0
    for command, callback in commands():
        for name, option in getattr(callback, "options", {}).items():
            if isinstance(option.default, Default):
                ref = option.default
                key = ref.module, ref.owner, ref.name or name
                assert _from_source(*key) == _from_import(*key), (command, name)
                checked += 1
    assert checked >= 40


def test_the_option_default_is_the_librarys():
    """What typer declares (and --help shows) is the library's value, formatted for the option."""
    from calib.commands.compare import DEFAULT_CALIBRATORS
    from calib.session import RunConfig

    import typer.main

    group = typer.main.get_command(app)
    params = {p.name: p.default for p in group.commands["compare"].params}
    assert params["calibrators"] == ",".join(DEFAULT_CALIBRATORS)
    assert params["samples"] == RunConfig.samples and params["sqnr_images"] == 16
    verify = {p.name: p.default for p in group.commands["cache"].commands["verify"].params}
    assert verify["qdq_flavor"] == "tensorrt"


def test_library_default_reads_fields_parameters_and_constants(tmp_path, monkeypatch):
    (tmp_path / "fake_defaults_mod.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        NAMES = ("a", "b")
        LIMIT: int = 7

        def computed():
            return 3

        @dataclass
        class Config:
            size: int = 224
            name: str | None = None
            later: int = computed()

        def command(path, count=LIMIT, names=NAMES, *, flag=False, factor=computed()):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = "fake_defaults_mod"
    assert library_default(mod, "Config", "size") == 224
    assert library_default(mod, "Config", "name") is None
    assert library_default(mod, "command", "count") == 7
    assert library_default(mod, "command", "names") == ("a", "b")
    assert library_default(mod, "command", "flag") is False
    with pytest.raises(NotLiteral):
        _from_source(mod, "command", "factor")
    assert library_default(mod, "command", "factor") == 3     # not a literal: read by importing
    assert library_default(mod, "Config", "later") == 3
    with pytest.raises(LookupError):
        library_default(mod, "command", "path")


def literal_defaults() -> dict[str, object]:
    """Flag -> literal default of every option declared in calib/cli with one (None aside)."""
    found = {}
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flag = next((s.split("/")[0] for s in strings if s.startswith("--")), None)
            if name == "opt":
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
            elif name == "Option" and node.args and not (isinstance(node.args[0], ast.Constant)
                                                          and isinstance(node.args[0].value, str)):
                default = node.args[0]
            else:
                continue
            if isinstance(default, ast.Constant) and default.value is not None and default.value is not ...:
                found[flag] = default.value
    return found


def test_the_cli_restates_no_default_the_library_declares():
    """A literal default in the CLI only for options no library function takes (display and
    parsing choices); every other option names the library's default (RunConfig's, or the command
    function's)."""
    assert literal_defaults() == {"--json": False, "--batch-sizes": "1,32", "--seconds": 3.0, "--top": 20}


def test_help_imports_no_heavy_library():
    """`calib --help` builds every command's options: reading the defaults must not import the
    modules that hold them (calib.session.context pulls in onnx)."""
    code = ("import sys, typer.main, calib.cli; typer.main.get_command(calib.cli.app); "
            "print(sorted(m for m in ('onnx', 'torch', 'numpy', 'calib.session.context', 'calib.commands.run') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
