"""The house keeps its shape (docs/architecture.md): no import cycle, function-level imports
included, and no arrow from a lower package up to a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.cli import ROOT

PACKAGES = {"gaitprep": ROOT / "gaitprep", "gaittrain": ROOT / "gaittrain", "gaitcli": ROOT / "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((name, *parts))] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of this tree that ``path`` imports anywhere (top level or in a function);
    ``from PACKAGE import module`` counts as importing that module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules (its __init__ lists them)
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(
                path[path.index(nxt) :] + [nxt]
            )
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


#: (importer, imported): arrows that would run up the house.
FORBIDDEN = [
    ("gaitprep", "gaittrain"),
    ("gaitprep", "gaitcli"),
    ("gaittrain", "gaitcli"),
    ("gaittrain.evaluation", "gaittrain.inference"),
    ("gaittrain.evaluation", "gaittrain.trainer"),
    ("gaittrain.evaluation", "gaittrain.study"),
    ("gaittrain.inference", "gaittrain.study"),
    ("gaittrain.inference", "gaittrain.trainer"),
    ("gaittrain.trainer", "gaittrain.evaluation"),
    ("gaittrain.trainer", "gaittrain.study"),
    ("gaittrain.losses", "gaittrain.config"),
    ("gaittrain.models", "gaittrain.config"),
    ("gaittrain.schema", "gaittrain.config"),
    ("gaittrain.run_folder", "gaittrain.trainer"),
    ("gaittrain.run_folder", "gaittrain.evaluation"),
]


def test_no_arrow_runs_up_the_house() -> None:
    wrong = [
        f"{a} imports {b}"
        for a, imported in _graph().items()
        for b in imported
        for low, high in FORBIDDEN
        if (a == low or a.startswith(low + ".")) and (b == high or b.startswith(high + "."))
    ]
    assert not wrong, wrong
