"""The package's import graph has no cycles, and the runtime sits below the sources.

Every ``import`` and ``from ... import`` inside ``sabot`` is read with :mod:`ast` (function-level
imports included: a lazy import is still a dependency), plus the ``import``/``cimport`` lines of
the Cython modules.  An edge goes from a module to every module it names: ``from pkg import x``
is an edge to ``pkg.x`` when that is a submodule, else to ``pkg``.  Any cycle fails the test,
printed as ``a -> b -> ... -> a``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sabot"

_PYX_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s+([\w\s,()*]+)|c?import\s+([\w.]+))",
                         re.M)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            found.setdefault(_module_name(path), path)
    return found


def _resolve(current: str, is_package: bool, level: int, module: Optional[str]) -> str:
    """The absolute name of a (possibly relative) import in module ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _targets(mods: Dict[str, Path], target: str, names: List[str]) -> Set[str]:
    """The package modules an import of ``names`` from ``target`` loads."""
    out: Set[str] = set()
    if not names and target in mods:
        out.add(target)
    for name in names:
        sub = f"{target}.{name}"
        if sub in mods:
            out.add(sub)  # a submodule: that module
        elif target in mods:
            out.add(target)  # a name the package or module defines
    return out


def import_graph() -> Dict[str, Set[str]]:
    """``module -> modules of this package it imports`` for every module under ``sabot``."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        is_package = path.stem == "__init__"
        edges: Set[str] = set()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text, filename=str(path))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        edges |= _targets(mods, alias.name, [])
                elif isinstance(node, ast.ImportFrom):
                    target = _resolve(name, is_package, node.level, node.module)
                    edges |= _targets(mods, target, [a.name for a in node.names])
        else:
            for m in _PYX_IMPORT.finditer(text):
                if m.group(3):
                    edges |= _targets(mods, m.group(3), [])
                    continue
                spec = m.group(1)
                level = len(spec) - len(spec.lstrip("."))
                target = _resolve(name, is_package, level, spec.lstrip(".") or None)
                names = [n.strip() for n in m.group(2).replace("(", "").replace(")", "").split(",")]
                edges |= _targets(mods, target, [n.split()[0] for n in names if n])
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        members = set(comp)
        start = min(comp)
        # a shortest path back to start inside the component
        paths = {start: [start]}
        todo = [start]
        found: Optional[List[str]] = None
        while todo and found is None:
            nxt = []
            for v in todo:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if found:
                    break
            todo = nxt
        cycles.append((found or [start]) + [f"(all involved: {', '.join(sorted(comp))})"])
    return cycles


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "sabot.api.stream" in graph and "sabot.fintech._scope" in graph
    assert "sabot.api._kafka" in graph["sabot.api.stream"] or any(
        "sabot.api._kafka" in graph[m] for m in graph["sabot.api.stream"])


def test_cycle_finder_finds_a_lazy_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a", "(all involved: a, b, c)"]]


def test_no_import_cycles_in_sabot() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen: Set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_sources_do_not_import_the_runtime() -> None:
    """The Kafka source and the plan nodes know nothing of checkpoints, tasks, metrics or the
    Stream: the runtime drives them, never the other way round."""
    graph = import_graph()
    runtime = {"sabot.api._runtime", "sabot.api._checkpoint", "sabot.api._tasks",
               "sabot.api.stream", "sabot.api.app", "sabot.metrics", "sabot.state"}
    for module in ("sabot.api._kafka", "sabot.api._plan", "sabot.api._decode"):
        assert not (_reachable(graph, module) & runtime), (
            f"{module} reaches {sorted(_reachable(graph, module) & runtime)}")


def test_time_units_have_one_home() -> None:
    """Unit tables and unit factors are written only in sabot.timeunits."""
    import re as _re

    offenders = []
    pattern = _re.compile(r"_UNITS?_NS\s*=|\*\s*1_000_000\b|/\s*1_000_000\b")
    for name, path in _modules().items():
        if name == "sabot.timeunits" or not name.startswith(("sabot.api", "sabot.fintech.asof",
                                                              "sabot.fintech._scope",
                                                              "sabot.metrics")):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
