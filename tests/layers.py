"""The import rules of the house, read from the code with `ast` (nothing is imported):

- the layers point down: `storage` imports neither `executor` nor `bot`; `executor` never `bot`;
- nothing outside the `bot.cli` package imports it or any of its modules (the composition
  root wires everything; it is wired by nobody); its own modules import each other;
- no circle between modules (lazy imports inside functions count too);
- no circle between the subpackages (`executor.sandbox`, `bot.slack`, ...; a module directly
  in `executor/` or `bot/` is a node of its own).

`violations(root)` lists every broken rule as one line; tests/test_layers.py runs it on the repo
and on small trees built to break each rule."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

LAYERS = ("bot", "executor", "storage")
FORBIDDEN = {"storage": {"executor", "bot"}, "executor": {"bot"}}
ROOT_MODULE = "bot.cli"


def in_root(module: str) -> bool:
    """The composition root: `bot.cli` itself, or a module of its package."""
    return module == ROOT_MODULE or module.startswith(ROOT_MODULE + ".")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> dict[str, set[tuple[str, int]]]:
    """Module -> the modules of the house it imports (with the line), resolved to files."""
    paths = [p for layer in LAYERS if (root / layer).is_dir() for p in (root / layer).rglob("*.py")]
    known = {module_name(root, p) for p in paths}
    graph: dict[str, set[tuple[str, int]]] = {}
    for path in paths:
        name = module_name(root, path)
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` names a module when mod is one of ours
                targets = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in known
                    else node.module
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in known:  # `import a.b.c` of a name inside c
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add((target, node.lineno))
    return graph


def package_of(module: str) -> str:
    """The node a module belongs to in the subpackage graph."""
    parts = module.split(".")
    return ".".join(parts[:2])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(root: Path) -> list[str]:
    graph = imports(root)
    found: list[str] = []
    for module, edges in sorted(graph.items()):
        layer = module.split(".")[0]
        for target, line in sorted(edges):
            if target.split(".")[0] in FORBIDDEN.get(layer, ()):
                found.append(f"{module}:{line} imports {target} (layers point down)")
            if in_root(target) and not in_root(module):
                found.append(f"{module}:{line} imports {target} (nothing imports the root)")
    modules = {m: {t for t, _ in edges} for m, edges in graph.items()}
    found += [f"import circle between modules: {' <-> '.join(c)}" for c in circles(modules)]
    packages: dict[str, set[str]] = {}
    for module, targets in modules.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module)
        )
    found += [f"import circle between packages: {' <-> '.join(c)}" for c in circles(packages)]
    return found


def outside_references(root: Path, folders: Iterable[str]) -> list[str]:
    """Lines in tests, benches and CI that reach for files beside the repository."""
    markers = ("/".join(["..", "shared"]), " / ".join(["parent", '"shared"']))  # spelt apart
    hits = []
    for folder in folders:
        for path in (root / folder).rglob("*"):
            if not path.is_file() or path.suffix not in {".py", ".sh", ""}:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if any(marker in line for marker in markers):
                    hits.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return hits
