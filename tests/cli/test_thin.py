"""calib.cli stays thin: it parses options (calib.cli.groups), calls calib.commands and prints
(calib.cli.console). The library work it used to do (resolving models, validating and listing
caches, checking a build on its device) is in calib.commands, so the CLI imports nothing else of
calib's."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "calib" / "cli"

# What the command line may use of calib: its own modules, the commands, the error type it turns
# into one line, the version it prints, and RunConfig, which the groups build.
ALLOWED = ("calib.cli", "calib.commands", "calib.errors")
ALLOWED_EXACT = {"calib": {"__version__"}, "calib.session.config": {"RunConfig"}}


def calib_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "calib":
            yield node.module, {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "calib":
                    yield a.name, set()


def test_the_cli_imports_only_commands_and_its_own_modules():
    wrong = []
    for path in sorted(CLI.glob("*.py")):
        for module, names in calib_imports(path):
            if module in ALLOWED_EXACT and names <= ALLOWED_EXACT[module]:
                continue
            if not any(module == a or module.startswith(a + ".") for a in ALLOWED):
                wrong.append(f"{path.name}: {module} {sorted(names)}")
    assert not wrong, "library work belongs in calib.commands:\n" + "\n".join(wrong)


def test_every_command_module_docstring_says_why():
    for path in CLI.glob("*.py"):
        if path.name != "__main__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), path.name
