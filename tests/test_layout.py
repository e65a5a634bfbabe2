"""The layers, checked from the source: no two leukedge modules import each other (directly or round a
longer loop), and no import points up the flow (edge <- train <- optimize <- benchmarks; leukedge.evaluation
below train). Lazy imports inside functions count too: they are imports all the same."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the dotted name it is installed as (pyproject's package-dir)
FOLDERS = {"leukedge": "leukedge", "edge": "leukedge.edge", "train": "leukedge.train",
           "optimize": "leukedge.optimize", "benchmarks": "leukedge.benchmarks"}
FORBIDDEN = {  # importer prefix -> prefixes it must never import
    "leukedge.edge": ("leukedge.train", "leukedge.optimize", "leukedge.benchmarks", "leukedge.cli"),
    "leukedge.train": ("leukedge.optimize", "leukedge.benchmarks"),
    "leukedge.optimize": ("leukedge.benchmarks",),
    "leukedge.evaluation": ("leukedge.train",),
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, dotted in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if folder == "leukedge" and rel.parts[0] in ("edge", "train", "optimize", "benchmarks"):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([dotted, *parts])] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:  # `from x import name`: the module x; `import a.b.c`: the deepest module
                t = t.rpartition(".")[0]
            if t and t != name and t != package or (t == package and t != name and t in known):
                out.add(t)
    return {t for t in out if t in known and t != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    # a package's __init__ is imported on the way to its modules: it is not a dependency of theirs
    return {name: {t for t in _imports(name, path, known) if not name.startswith(t + ".")}
            for name, path in mods.items()}


def test_no_import_points_up_the_flow():
    wrong = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
             for low, banned in FORBIDDEN.items() if (a == low or a.startswith(low + "."))
             and any(b == x or b.startswith(x + ".") for x in banned)]
    assert not wrong, wrong


def test_no_two_modules_import_each_other():
    graph = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles
