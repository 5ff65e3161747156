"""Every code snippet in README.md, docs/*.md and datasets/*.md is checked against the code, so the
documentation cannot drift from it (issue 22, row 5: docs/tensorrt.md cited `calib.bench.bench`,
which did not exist).

- Code blocks (fenced, or indented by four spaces) are split into lines of shell and Python.
- A shell line that runs `calib ...` is parsed by the real command tree (click, through typer)
  without running it: the command, every option and every value's type must be accepted, and
  required options present. `calib ...` in a shell comment and in inline code is checked by name
  (the command and each option exist): those are fragments, not whole command lines.
- Other shell commands cannot run here and are listed in EXTERNAL with the reason; what can be
  checked of them is (`python -c` code compiles, `python -m` modules exist).
- Python is compiled, every `calib` import and dotted name resolves, and every call to a calib
  callable binds to its signature; then the block is executed in an empty folder, unless
  NOT_EXECUTED lists it with the reason it cannot run here.
- A block that is neither (sample output, a folder layout) must be listed in NOT_CODE, so a broken
  Python snippet cannot pass as prose. Entries of both lists that match no block fail the test.
- Inline code naming `calib.x.y` (or calling `calib.x.y(...)`) must resolve (and bind).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "datasets").glob("*.md"))]

# (file, start of the block's first line) -> why the block is not code.
NOT_CODE = {
    ("tensorrt.md", "the TensorRT backend needs"): "sample error message",
    ("tensorrt.md", "TensorRT-RTX engines run only"): "sample can_run() messages",
    ("tensorrt.md", "tiny.int8.onnx is calib's ort"): "sample error message",
    ("imagenet-val.md", "DIR/n01440764/"): "folder layout",
    ("imagenet-val.md", "DIR/ILSVRC2012_val_00000001"): "folder layout",
}

# (file, start of the Python's first line) -> why it is compiled and resolved but not executed.
NOT_EXECUTED = {
    ("README.md", "torch.onnx.export(model"): "needs the user's torch model `model`; tests/models/torch_models.py "
                                             "exports models this way with both exporters",
    ("tensorrt.md", "from calib.backends import get_backend"): "builds engines: TensorRT-RTX needs a Q/DQ model file "
                                                               "and TensorRT 10/11 a GPU (on no machine we reach)",
    ("tensorrt.md", "from calib.backends.tensorrt.calibrators"): "implicit calibration: needs TensorRT <= 10 and a GPU",
}

# First word of a shell command that is not calib -> why it is not run.
EXTERNAL = {
    "pip": "installs packages: no network here but package registries, and it would change the environment "
           "under test",
    "python": "-m venv creates an environment, -c imports a product that may not be installed: the code is "
              "compiled and the module looked up instead",
    "python3": "as python",
    ".": "activates a virtual environment",
    "trtexec": "TensorRT's own tool: TensorRT 10/11 are on no machine we reach",
    "torchrun": "starts processes on several hosts (tests/passes/test_passes_distributed.py runs two node ranks on "
                "one machine): here torchrun's options are parsed by torchrun's own parser and the calib command "
                "after `-m calib.cli` by calib's",
}

# Inline names that are entry-point groups (calib.plugins), not modules: module -> its registry.
ENTRY_POINT_GROUPS = {"calib.calibrators": "calib.calibrators.registry", "calib.flavors": "calib.quantize.registry",
                      "calib.backends": "calib.backends.registry", "calib.metrics.decoders": "calib.metrics.decode",
                      "calib.datasets": "calib.data.readers"}

SHELL_WORDS = {"calib", *EXTERNAL}


@dataclass
class Block:
    path: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """Fenced blocks (``` at any indent, dedented) and blocks indented by four spaces after a
    blank line, outside fences."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```", lines[i])
        if fence:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append(Block(path, start + 1, textwrap.dedent("\n".join(body))))
        elif lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i])
                i += 1
            blocks.append(Block(path, start + 1, textwrap.dedent("\n".join(body)).strip("\n")))
            continue
        i += 1
    return blocks


ALL_BLOCKS = [b for path in DOCS for b in code_blocks(path)]


def split_block(block: Block) -> tuple[list[str], str]:
    """(shell command lines, the Python) of a block: a line is shell when its first word is a
    shell command calib's docs use; backslash continuations are joined."""
    shell, python = [], []
    text = block.text.replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in SHELL_WORDS:
            shell.append(line.strip())
        else:
            python.append(line)
    return shell, textwrap.dedent("\n".join(python)).strip("\n")


def _listed(table: dict, block: Block, first_line: str):
    return next((key for key in table if key[0] == block.path.name and first_line.startswith(key[1])), None)


# -- the command line --------------------------------------------------------------------------

def _cli():
    """The root click command of `calib`, with the click core and exceptions typer uses (typer
    may carry its own copy of click)."""
    from calib.cli import app

    root = typer.main.get_command(app)
    core = importlib.import_module(next(c for c in type(root).__mro__ if c.__name__ == "Command").__module__)
    exceptions = importlib.import_module(core.__name__.rsplit(".", 1)[0] + ".exceptions")
    return root, core, exceptions


def _resolve_command(tokens: list[str]):
    """(command, the tokens after its name, its full name) for `calib <tokens>`."""
    root, core, _ = _cli()
    cmd, name, rest = root, ["calib"], list(tokens)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(core.Context(cmd), rest[0])
        assert sub is not None, f"calib has no command '{' '.join(name[1:] + [rest[0]])}'"
        cmd, name, rest = sub, name + [rest[0]], rest[1:]
    return cmd, rest, " ".join(name)


def check_calib_command(tokens: list[str], whole: bool = True) -> None:
    """Parse `calib <tokens>` with the real command tree. `whole`: a complete command line
    (types, required options); otherwise only that the command and every option exist."""
    cmd, rest, name = _resolve_command(tokens)
    if not whole:
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for token in rest:
            if token.startswith("--"):
                assert token.split("=", 1)[0] in known, f"'{name}' has no option {token}"
        return
    _, _, exceptions = _cli()
    try:
        cmd.make_context(name, rest)
    except typer.Exit:
        pass  # --version
    except exceptions.UsageError as e:
        raise AssertionError(f"'{' '.join([name, *rest])}': {e.format_message()}") from None


def calib_lines(line: str) -> list[list[str]]:
    """The calib commands of one shell line: `a && calib x`, and `calib cache list | show C |
    verify C` (alternatives of the last subcommand, as the README's overview writes them)."""
    commands = []
    for segment in line.split("&&"):
        words = shlex.split(segment, comments=True)
        if not words or words[0] != "calib":
            continue
        if " | " in segment:
            first, *alternatives = segment.split("#", 1)[0].split(" | ")
            head = shlex.split(first)[1:]
            _, rest, name = _resolve_command(head)
            prefix = name.split()[1:-1]
            commands.append(head)
            commands += [prefix + shlex.split(a) for a in alternatives]
        else:
            commands.append(words[1:])
    return commands


def comment_commands(line: str) -> list[list[str]]:
    """`calib ...` fragments in a shell comment ('# or: calib build --backend tensorrt ...')."""
    if "#" not in line:
        return []
    comment = line.split("#", 1)[1]
    return [shlex.split(m.group(0))[1:] for m in re.finditer(r"\bcalib( [^;#]+)?", comment)]


def check_external(line: str) -> None:
    """What can be checked of a shell command that is not run."""
    for segment in line.split("&&"):
        words = shlex.split(segment, comments=True)
        if not words or words[0] == "calib":
            continue
        assert words[0] in EXTERNAL, f"no reason recorded for not running '{words[0]}'"
        if words[0] == "pip":
            for word in words:
                extras = re.fullmatch(r"(?:\.|calib)\[([\w,-]+)\]", word)
                for extra in extras.group(1).split(",") if extras else []:
                    assert extra in _extras(), f"calib has no extra '{extra}' (pyproject.toml)"
        if words[0] == "torchrun":
            check_torchrun(words[1:])
        if words[0] in ("python", "python3") and len(words) > 2:
            if words[1] == "-c":
                compile(words[2], "<python -c>", "exec")
            elif words[1] == "-m":
                assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"


def check_torchrun(args: list[str]) -> None:
    """torchrun's options through its own parser; the module it runs must be calib's command line,
    whose arguments are parsed as a whole calib command."""
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(args)
    assert parsed.module and parsed.training_script == "calib.cli", "torchrun in the docs runs -m calib.cli"
    check_calib_command(list(parsed.training_script_args))


def _extras() -> set[str]:
    """calib's optional-dependency groups, from pyproject.toml."""
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))


# -- Python ------------------------------------------------------------------------------------

def resolve_name(dotted: str):
    """The object `calib.a.b.c` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{'.'.join(parts[:i])} has no attribute '{attr}' (in {dotted})"
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"cannot import {dotted}")


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _bind(func, call: ast.Call, where: str, bound_self: bool = False) -> None:
    """The call's arguments must fit `func`'s signature (values stand in as None; with *args or
    **kwargs in the call, only the names given are checked)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    args = [None] * (len(call.args) + bound_self)
    kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
    starred = any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords)
    args = [a for a, node in zip(args, [None] * bound_self + call.args) if not isinstance(node, ast.Starred)]
    try:
        (sig.bind_partial if starred else sig.bind)(*args, **kwargs)
    except TypeError as e:
        raise AssertionError(f"{where}: {getattr(func, '__qualname__', func)}{sig}: {e}") from None


def check_python(code: str, where: str) -> None:
    """Compile, resolve calib's names, and bind the calls to calib's callables."""
    tree = ast.parse(code, where)
    names: dict[str, object] = {}     # local name -> calib object
    instances: dict[str, type] = {}   # local name -> calib class of the value assigned to it
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "calib":
            for alias in node.names:
                names[alias.asname or alias.name] = resolve_name(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "calib":
                    resolve_name(alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            made = _instance_class(node.value, names)
            if made is not None:
                instances[node.targets[0].id] = made
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        if dotted is None:
            continue
        head, _, attr = dotted.partition(".")
        if dotted.startswith("calib."):
            _bind(resolve_name(dotted), node, where)
        elif head in names:
            obj = names[head]
            for part in attr.split(".") if attr else []:
                assert hasattr(obj, part), f"{where}: {head} has no attribute '{part}'"
                obj = getattr(obj, part)
            _bind(obj, node, where)
        elif head in instances and attr and "." not in attr:
            cls = instances[head]
            assert hasattr(cls, attr), f"{where}: {cls.__name__} has no method '{attr}'"
            _bind(getattr(cls, attr), node, where, bound_self=True)


def _instance_class(call: ast.Call, names: dict) -> type | None:
    """The calib class a call makes: a calib class called, or get_backend("<literal>")."""
    dotted = _dotted(call.func)
    obj = names.get(dotted) if dotted else None
    if inspect.isclass(obj):
        return obj
    if dotted == "get_backend" and call.args and isinstance(call.args[0], ast.Constant):
        from calib.backends import backend_class

        return backend_class(call.args[0].value)
    return None


# -- the tests ---------------------------------------------------------------------------------

def test_blocks_are_found():
    """The extractor sees the blocks it should (a regex slip would make every test below vacuous)."""
    names = {b.path.name for b in ALL_BLOCKS}
    assert {"README.md", "tensorrt.md", "imagenet-val.md"} <= names and len(ALL_BLOCKS) >= 20


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_code_block(block, tmp_path, monkeypatch):
    shell, python = split_block(block)
    for line in shell:
        for tokens in calib_lines(line):
            check_calib_command(tokens)
        for tokens in comment_commands(line):
            check_calib_command(tokens, whole=False)
        check_external(line)
    if not python.strip():
        return
    first = python.strip().splitlines()[0]
    if _listed(NOT_CODE, block, first):
        return  # (a folder layout like DIR/n01440764/x.JPEG even parses as Python: a division)
    try:
        ast.parse(python)
    except SyntaxError as e:
        raise AssertionError(f"{block.where}: neither shell nor Python ({e.msg} at line {e.lineno}); "
                             f"add it to NOT_CODE if it is prose") from None
    check_python(python, block.where)
    if _listed(NOT_EXECUTED, block, first):
        return
    monkeypatch.chdir(tmp_path)
    exec(compile(python, block.where, "exec"), {"__name__": "__doc_snippet__"})


def test_every_listed_exception_matches_a_block():
    """An entry whose block was edited away would silently excuse nothing; keep the lists true."""
    firsts = []
    for block in ALL_BLOCKS:
        shell, python = split_block(block)
        if python.strip():
            firsts.append((block, python.strip().splitlines()[0]))
    for table in (NOT_CODE, NOT_EXECUTED):
        for key in table:
            assert any(_listed({key: 0}, b, first) for b, first in firsts), f"no block starts with {key}"


INLINE = sorted({(path.name, m.group(1)) for path in DOCS
                 for m in re.finditer(r"`(calib[. ][^`\n]+)`", path.read_text())})


@pytest.mark.parametrize("where,span", INLINE, ids=[f"{w}:{s[:40]}" for w, s in INLINE])
def test_inline_code(where, span):
    if span.startswith("calib "):
        tokens = [t for t in shlex.split(span)[1:]]
        check_calib_command(tokens, whole=False)
        return
    if span in ENTRY_POINT_GROUPS and not importlib.util.find_spec(span):
        assert importlib.import_module(ENTRY_POINT_GROUPS[span]).ENTRY_POINT_GROUP == span, span
        return
    try:
        tree = ast.parse(span, mode="eval")
    except SyntaxError:
        tree = None
    if tree is None:
        resolve_name(re.match(r"calib(\.\w+)+", span).group(0))
        return
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (_dotted(n.func) or "").startswith("calib.")]
    if not calls:
        resolve_name(_dotted(tree.body))
    for call in calls:
        _bind(resolve_name(_dotted(call.func)), call, f"{where}: `{span}`")
