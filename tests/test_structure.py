"""The code's shape: data flows one way (no import cycles), and block type names live with their blocks."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Repository folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"kzoo": "kzoo", "blocks": "kzoo.blocks", "serving": "kzoo.serving", "zoo_configs": "kzoo.zoo_configs"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imports_of(path: Path, name: str, known: set[str], top_level_only: bool) -> set[str]:
    """kzoo modules `path` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "including-deferred"])
def test_no_import_cycles(top_level_only):
    """Neither module-level imports nor imports deferred into functions form a cycle, except the
    package root itself (every module's parent package `kzoo` is imported first by Python; `kzoo`'s
    __init__ re-exporting the API is not a back edge)."""
    mods = modules()
    known = set(mods)
    graph = {name: imports_of(path, name, known, top_level_only) - {"kzoo"} for name, path in mods.items()}
    graph["kzoo"] = set()
    assert cycles(graph) == []


def test_serving_reads_raw_columns_through_one_small_module():
    mods = modules()
    known = set(mods)
    for name, path in mods.items():
        if name.startswith("kzoo.serving"):
            imported = imports_of(path, name, known, top_level_only=False)
            assert not {m for m in imported if m in ("kzoo.data", "kzoo.trainer", "kzoo.features")}, (name, imported)
    assert "kzoo.columns" in imports_of(mods["kzoo.serving.requests"], "kzoo.serving.requests", known, False)
    assert "kzoo.columns" in imports_of(mods["kzoo.features"], "kzoo.features", known, False)
    assert "kzoo.columns" in imports_of(mods["kzoo.data"], "kzoo.data", known, False)


def test_bench_scripts_do_not_import_each_other_both_ways():
    scripts = {p.stem: p for p in (REPO / "bench").glob("*.py")}
    graph = {}
    for stem, path in scripts.items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        graph[stem] = {s for s in scripts if s in names and s != stem}
    assert cycles(graph) == []


def test_no_block_type_name_is_hard_coded_outside_the_blocks():
    """The library asks a block class (feature_block, loss_only, holds_tables) instead of testing its
    type name, so a new block with the same role needs no edit elsewhere."""
    from kzoo.blocks.registry import block_types

    names = set(block_types())
    offenders = []
    for path in list((REPO / "kzoo").rglob("*.py")) + list((REPO / "serving").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_backend_specific_code_lives_in_one_module_per_backend():
    """Only kzoo.blocks.backend picks a backend module; blocks themselves never branch on the backend."""
    pattern = re.compile(r"keras\.backend\.backend\(\)")
    for path in (REPO / "blocks").glob("*.py"):
        assert not pattern.search(path.read_text()), path
    assert (REPO / "blocks" / "backend" / "tensorflow.py").is_file()
