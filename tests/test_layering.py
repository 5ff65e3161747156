"""docs/design.md is the map of calib's layers: every module imports only from its own layer or
below, and the table there names every module. This test reads the table, so the page and the
code cannot drift apart."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def layers() -> list[tuple[int, list[str]]]:
    rows = []
    for line in (REPO / "docs" / "design.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), re.findall(r"`([\w.]+)`", m.group(2))))
    return rows


def layer_of(module: str, table) -> int | None:
    best = None
    for number, prefixes in table:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (number, len(p))
    return best[0] if best else None


def absolute(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    """The module a `from ... import` in `module` reads, its relative dots resolved."""
    base = node.module or ""
    if not node.level:
        return base
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([base] if base else []))


def imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                out.add(absolute(child, module, is_pkg))
            visit(child)

    visit(tree)
    return {m for m in out if m == "calib" or m.startswith("calib.")}


def modules():
    for path in sorted((REPO / "calib").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts)
        yield path, name[: -len(".__init__")] if name.endswith(".__init__") else name


def test_the_table_has_the_layers_in_order():
    table = layers()
    assert [n for n, _ in table] == list(range(len(table))) and len(table) >= 10


def test_every_module_is_in_a_layer():
    table = layers()
    missing = [name for _, name in modules() if layer_of(name, table) is None]
    assert not missing, f"add these to docs/design.md: {missing}"


def test_no_module_imports_from_a_layer_above_its_own():
    table = layers()
    upward = []
    for path, name in modules():
        own = layer_of(name, table)
        for target in imports(path, name):
            other = layer_of(target, table)
            if other is not None and own is not None and other > own:
                upward.append(f"{name} (layer {own}) imports {target} (layer {other})")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    # The check itself can fail: a data module importing a command is flagged.
    table = layers()
    fake = tmp_path / "x.py"
    fake.write_text("from calib.commands.run import run\n")
    assert layer_of("calib.data.x", table) < layer_of(next(iter(imports(fake, "calib.data.x"))), table)


def every_import(path: Path, module: str, known: set[str]) -> set[str]:
    """The calib modules `module` imports anywhere: at the top, inside functions and under
    TYPE_CHECKING alike (`from calib.data import dataset` names the submodule)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, module, is_pkg)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return (out & known) - {module}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph` (its strongly connected parts of two modules or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_not_even_through_a_type():
    # A type two modules share lives below both: a TYPE_CHECKING import that closes a circle
    # (calib.data.classes once typed its argument with calib.data.dataset's Dataset) is refused too.
    found = dict(modules())
    known = set(found.values())
    graph = {name: every_import(path, name, known) for path, name in found.items()}
    assert not circles(graph), circles(graph)


def test_the_circle_finder_sees_a_circle_through_types():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
