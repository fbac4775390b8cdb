"""The package's shape: no import cycle, each layer imports only the layers below it, no private imports.

Every ``import`` counts, wherever it is written (module level, inside a function, under ``TYPE_CHECKING``):
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "workers")
#: The user-facing top: the facades, the CLI, the HTTP API and the demo (which uses the SDK as a user would).
TOP = ("registry", "registry.sdk", "registry.remote", "registry.cli", "registry.cli_output", "registry.cli_access",
       "registry.demo", "registry.loading", "registry.api", "registry.web")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (a ``from package import sub`` counts as ``package.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        edges |= {t for t in targets if t in modules and t != name}
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_top(name: str) -> bool:
    return any(name == top or (top != "registry" and name.startswith(top + ".")) for top in TOP)


def test_the_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_registry_and_workers():
    graph = _graph()
    assert "registry.service" in graph and "workers.runners" in graph  # the walk found the packages
    # The package __init__ re-exports the facade for users; no project module imports it.
    importers = sorted(name for name, edges in graph.items() if "registry" in edges and name != "registry")
    assert importers == [], f"modules importing the `registry` package itself (import the module instead): {importers}"
    assert _cycles(graph) == []


def test_layers_import_only_downwards():
    """Service modules never import workers or the facades; workers never import the facades."""
    wrong = []
    for name, edges in _graph().items():
        if _is_top(name):
            continue
        for target in edges:
            if _is_top(target):
                wrong.append(f"{name} -> {target} (a facade)")
            elif name.startswith("registry.") and target.startswith("workers"):
                wrong.append(f"{name} -> {target} (the service layer imports no worker code)")
    assert wrong == []


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                wrong += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert wrong == []
