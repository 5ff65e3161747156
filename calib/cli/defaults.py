"""Where each command-line option's default comes from: the library, where the value acts.

An option's default is declared once, in the library: a `RunConfig` field
(`calib.session.config.RunConfig.batch_size = 32`) or a command function's parameter
(`calib.commands.compare.compare_calibrators(sqnr_images=16)`). The option groups
(`calib.cli.groups`) name that place instead of restating the value, so the default shown by
`--help`, the one the CLI passes and the one a library caller gets cannot drift apart. Options
that exist only on the command line (`--json`, `--top`) keep a literal default in their one
declaration.

The defaults are read from the modules' source text with `ast`, not by importing them:
`calib --help` builds every command's options, and importing `calib.session` pulls in onnx
(about a second; the CLI itself starts in a fifth of that). Only literals are read (a number, a
string, a tuple, None, or a module-level constant holding one); anything else, or a module whose
source is not at hand, is read by importing it, which is slower but gives the same value
(tests/cli/test_defaults.py compares the two ways for every option).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable

CONFIG = ("calib.session.config", "RunConfig")   # the run configuration every data command builds


@dataclasses.dataclass(frozen=True)
class Default:
    """A reference to a default in the library: field or parameter `name` of `owner` (a dataclass
    or a function) in `module`; `shown` turns the library's value into the option's (e.g. a tuple of
    names into "a,b,c"). `name=None`: the name of the option it is the default of."""
    module: str
    owner: str
    name: str | None = None
    shown: Callable[[Any], Any] | None = None

    def value(self, name: str | None = None) -> Any:
        value = library_default(self.module, self.owner, self.name or name)
        return self.shown(value) if self.shown else value


def config(field: str | None = None, shown: Callable[[Any], Any] | None = None) -> Default:
    """The default of a `RunConfig` field (by default, the field named like the option)."""
    return Default(*CONFIG, field, shown)


def param(module: str, function: str, name: str | None = None, shown: Callable[[Any], Any] | None = None) -> Default:
    """The default of parameter `name` of `function` in `module` (a command's own option)."""
    return Default(module, function, name, shown)


class NotLiteral(Exception):
    """The default is not a literal in the source: read it by importing the module."""


@functools.lru_cache(maxsize=None)
def _source_tree(module: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module)   # finds the file; runs only the parent package
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return None
    try:
        return ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _literal(node: ast.expr, tree: ast.Module) -> Any:
    if isinstance(node, ast.Name):   # a module-level constant: DEFAULT_CALIBRATORS = (...)
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
                stmt, ast.AnnAssign) and stmt.value is not None else []
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                return _literal(stmt.value, tree)
        raise NotLiteral(node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise NotLiteral(ast.unparse(node)) from None


def _from_source(module: str, owner: str, name: str) -> Any:
    tree = _source_tree(module)
    if tree is None:
        raise NotLiteral(module)
    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == owner:      # a dataclass field: `name: T = value`
            for item in stmt.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
                    if item.value is None:
                        raise LookupError(f"{module}.{owner}.{name} has no default")
                    return _literal(item.value, tree)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == owner:
            a = stmt.args
            positional = a.posonlyargs + a.args
            defaults = dict(zip([p.arg for p in positional[len(positional) - len(a.defaults):]], a.defaults))
            defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
            if name in defaults:
                return _literal(defaults[name], tree)
            if any(p.arg == name for p in positional + a.kwonlyargs):
                raise LookupError(f"{module}.{owner}({name}) has no default")
    raise NotLiteral(f"{module}.{owner}.{name}")


def _from_import(module: str, owner: str, name: str) -> Any:
    obj = getattr(importlib.import_module(module), owner)
    if dataclasses.is_dataclass(obj):
        f = {f.name: f for f in dataclasses.fields(obj)}[name]
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        raise LookupError(f"{module}.{owner}.{name} has no default")
    p = inspect.signature(obj).parameters[name]
    if p.default is inspect.Parameter.empty:
        raise LookupError(f"{module}.{owner}({name}) has no default")
    return p.default


@functools.lru_cache(maxsize=None)
def library_default(module: str, owner: str, name: str) -> Any:
    """The default of field or parameter `name` of `owner` in `module`, without importing the
    module when its source holds the default as a literal."""
    try:
        return _from_source(module, owner, name)
    except NotLiteral:
        return _from_import(module, owner, name)
