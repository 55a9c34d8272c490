"""The package's import graph: no cycle, the paper's path never imports the CPU try-out, helpers never import a stage.

Every `import` is read from the source (also those inside functions, which hide a cycle from Python's own import),
so the graph is the one a reader sees."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "r1aqa"
TRYOUT = "r1aqa.tryout"
# The modules a researcher runs, one per stage of the pipeline (and two tools); the helpers serve them.
STAGES = {"prepare_avqa", "filter_data", "grpo", "sft", "evaluate", "sweep", "report", "plan", "merge_lora"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, for every .py under `root` (a package folder)."""
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            targets |= {target for target in found if target in modules and target != name}
        graph[name] = {target for target in targets if not name.startswith(target + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph(PACKAGE)) is None


def test_the_papers_path_never_imports_the_cpu_tryout():
    graph = import_graph(PACKAGE)
    offenders = {
        name: sorted(t for t in targets if t.startswith(TRYOUT))
        for name, targets in graph.items()
        if not name.startswith(TRYOUT)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_helpers_never_import_a_stage():
    graph = import_graph(PACKAGE)
    stages = {f"r1aqa.{stage}" for stage in STAGES}
    assert stages <= set(graph), "a stage module was renamed: update STAGES"
    helpers = {name for name in graph if name not in stages and not name.startswith(TRYOUT)}
    assert {name: sorted(graph[name] & stages) for name in helpers if graph[name] & stages} == {}


@pytest.mark.parametrize("hidden", [False, True])
def test_a_planted_cycle_is_found(tmp_path, hidden):
    """The checker itself: a cycle through a function-level import is found as surely as a top-level one."""
    package = tmp_path / "r1aqa"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from r1aqa.b import f\n")
    body = "def g():\n    from r1aqa import a\n" if hidden else "import r1aqa.a\n"
    (package / "b.py").write_text("def f():\n    pass\n" + body)
    assert find_cycle(import_graph(package)) == ["r1aqa.a", "r1aqa.b", "r1aqa.a"]
    (package / "b.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(package)) is None
