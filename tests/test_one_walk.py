"""The walk is the only loop that runs models on data (calib.passes): no function elsewhere calls a
runner or an ONNX Runtime session inside a loop. A new loop over batches belongs in a consumer or
a pass, where it serves every device and every input at once."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_CALLS = {"infer", "run", "run_with_iobinding"}
# Loops that run a model but walk no data, each with its reason.
ALLOWED = {
    ("calib/backends/base.py", "time_runner"): "speed: the same random batch, repeated against a clock",
    ("calib/models/prepare.py", "_probe"): "intake: two random images, one by one and as a batch, to check the model",
}


def loops_running_models(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, function: str, in_loop: bool) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            loop = in_loop or isinstance(child, (ast.For, ast.While, ast.comprehension, ast.ListComp,
                                                 ast.GeneratorExp, ast.DictComp, ast.SetComp))
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                loop = False   # a function defined in a loop runs when it is called
            if (in_loop and isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr in MODEL_CALLS):
                found.append(f"{function}:{child.lineno} calls .{child.func.attr}() in a loop")
            visit(child, name, loop)

    visit(tree, "<module>", False)
    return found


def test_no_function_outside_the_passes_runs_a_model_in_a_loop():
    offenders = []
    for path in sorted((REPO / "calib").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("calib/passes/"):
            continue
        for hit in loops_running_models(path):
            function = hit.split(":")[0]
            if (rel, function) in ALLOWED:
                continue
            offenders.append(f"{rel} {hit}")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_a_loop_over_batches(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def evaluate(runner, batches):\n    return [runner.infer(b) for b in batches]\n")
    assert loops_running_models(bad) == ["evaluate:2 calls .infer() in a loop"]
    good = tmp_path / "good.py"
    good.write_text("def once(runner, x):\n    return runner.infer(x)\n")
    assert loops_running_models(good) == []
