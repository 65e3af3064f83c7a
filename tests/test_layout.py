"""The house rules, checked on the source: layers, no import circles, public names only across
packages, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("shared_cache", "worker", "tasks")
ALLOWED = {
    "worker": {"worker", "tasks", "shared_cache"},
    "tasks": {"tasks", "shared_cache"},
    "shared_cache": {"shared_cache"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in RUNTIME:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, wherever in the file (functions and TYPE_CHECKING included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_layers_and_public_names_only() -> None:
    mods = modules()
    for name, path in mods.items():
        top = name.split(".")[0]
        for imported in imports_of(name, path):
            other = imported.split(".")[0]
            if other in RUNTIME or other in ("devtools", "tests", "bench"):
                assert other in ALLOWED[top], f"{name} imports {imported}: {top} may not import {other}"
                if other != top:
                    private = [p for p in imported.split(".")[1:] if p.startswith("_") and not p.endswith("__")]
                    assert not private, f"{name} imports the private {imported} of another package"


def test_no_import_circles() -> None:
    mods = modules()
    graph = {
        name: {m for m in imports_of(name, path) if m in mods and m != name and not name.startswith(m + ".")}
        for name, path in mods.items()
    }
    # a package's __init__ re-exporting its modules is not a circle; importing the package is
    for name in graph:
        graph[name] = {m for m in graph[name] if not (name.startswith(m) and mods[m].name == "__init__.py")}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, "import circle: " + " -> ".join([*visiting[visiting.index(node) :], node])
        visiting.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_no_module_outside_tests_is_over_500_lines() -> None:
    for folder in (*RUNTIME, "devtools", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 500, f"{path.relative_to(ROOT)} has {lines} lines"
