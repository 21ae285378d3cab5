"""The house rules that reading the code would otherwise have to check: who imports whom."""

import ast
from pathlib import Path

import diffbench

PACKAGE = Path(diffbench.__file__).parent


def core_imports() -> dict[str, set[str]]:
    """Each core module's imports of other core modules, TYPE_CHECKING and function-level ones included."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("diffbench."):
                    deps.add(node.module.split(".")[1])
                elif node.module == "diffbench":
                    deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("diffbench."))
        found[name] = {d for d in deps if (PACKAGE / f"{d}.py").is_file() and d != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_core_has_no_import_cycle():
    graph = core_imports()
    assert len(graph) > 20, "the scan found the core modules"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_runner_imports_no_executor_backend():
    graph = core_imports()
    assert "dask_executor" not in graph["runner"]
    assert "executor" in graph["runner"], "it knows the task types"
    assert not {"runner", "measurement", "preparation", "figures"} & graph["dask_executor"]


def test_the_core_never_imports_a_plugin_module():
    for path in PACKAGE.glob("*.py"):
        assert "diffbench_plugins" not in path.read_text(), path.name
