"""The shape a newcomer relies on: no import circle among the controller's modules, and the agent never imports it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(pkg: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (module level and inside functions alike)."""
    graph: dict[str, set[str]] = {}
    for f in sorted((ROOT / pkg).glob("*.py")):
        mod = f.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if (ROOT / pkg / f"{d}.py").exists() and d != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    out, state = [], {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                out.append(path[path.index(d):] + [d] if d in path else [n, d])
            elif not state.get(d):
                visit(d, [*path, d])
        state[n] = 2

    for n in sorted(graph):
        if not state.get(n):
            visit(n, [n])
    return out


def test_no_import_circle_in_the_controller_or_the_agent():
    for pkg in ("playbooks", "agent"):
        assert _cycles(_imports(pkg)) == [], pkg


def test_the_agent_never_imports_the_controller():
    for f in (ROOT / "agent").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(
                node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] == "playbooks" for n in names), f


def _top_level_imports(f: Path) -> set[str]:
    """The top-level package of every absolute import in a file (module level and inside functions alike)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_controller_and_the_agent_never_import_the_lab():
    """The lab is the repository's test fleet and sandbox: the installed wheel ships neither it nor its tasks.

    No exception, not even for the task modules: `lab.*` tasks live in lab/tasks.py and only the
    repository's fabfile.py adds them to `fab`, so `fleetroll` (playbooks/cli.py) never lists them.
    """
    for pkg in ("playbooks", "agent"):
        for f in (ROOT / pkg).rglob("*.py"):
            assert "lab" not in _top_level_imports(f), f
    assert not (ROOT / "playbooks" / "lab").exists()


def test_the_wheel_packages_leave_the_lab_out():
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any(p == "lab" or p.startswith("lab.") or ".lab" in p for p in tool["packages"]), tool["packages"]
    assert "lab" not in str(tool.get("package-data", {}))
