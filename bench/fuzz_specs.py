"""Spec fuzzing: mutate the zoo's valid specs with hypothesis and check that every result either
builds or is refused with a SpecError naming JSON paths, never another exception from inside
kzoo, Keras, JAX or TensorFlow.

    python bench/fuzz_specs.py --cases 1000          # prints the count and the distinct error paths
    python bench/fuzz_specs.py --cases 900 --graphs 100 --out bench/out/fuzz_specs.json

Mutations: drop / rename / retype a key anywhere in the spec, wrong JSON types, out-of-range and
huge numbers, unicode names, a dangling or cyclic block input, an unknown block argument.
Valid graphs (`--graphs`, bench/fuzz_graphs.py): random block graphs drawn from the registry, each
built, compiled and trained one step on a tiny random batch, or refused with a SpecError (counted
apart). tests/test_fuzz.py runs a fixed-seed few of both.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]

WEIRD_VALUES = [None, True, 0, -1, 1.5, -3.7, 1e308, float("inf"), "", "x", "ünï©ødé ✓", [], [1, "a"], {},
                {"k": 1}, "1" * 300] + ([10**12, 2**63] if __import__("os").environ.get("FUZZ_HUGE", "1") == "1" else [])
HUGE = [0, -1, -0.5, 10**9, 10**15, 1e308, 2**31, 0.0001]
HUGE_OK = __import__("os").environ.get("FUZZ_HUGE", "1") == "1"
NAMES = st.one_of(st.sampled_from(["", " ", "ünï©ødé", "a.b", "group:", "名前", "x" * 200]),
                  st.text(min_size=1, max_size=12))


def zoo_specs() -> dict[str, dict]:
    import kzoo
    from kzoo import zoo_configs

    return {n: json.loads(kzoo.load_spec(n).to_json()) for n in zoo_configs.names()}


def _paths(node, prefix=()):
    """Every (path, value) in a JSON document, containers included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def mutations(draw, specs: dict):
    """(zoo name, mutation description, mutated spec)."""
    name = draw(st.sampled_from(sorted(specs)))
    spec = copy.deepcopy(specs[name])
    kind = draw(st.sampled_from(["drop", "rename", "retype", "number", "dangling", "cycle", "unknown_arg",
                                 "unicode_name", "retype", "drop"]))
    paths = [p for p, _ in _paths(spec) if p]
    if kind in ("drop", "rename"):
        keyed = [p for p in paths if isinstance(p[-1], str)] or paths
        path = draw(st.sampled_from(keyed))
        parent = _get(spec, path[:-1])
        value = parent.pop(path[-1])
        if kind == "rename":
            parent[draw(NAMES)] = value
        return name, f"{kind} {path}", spec
    if kind == "retype":
        path = draw(st.sampled_from(paths))
        _get(spec, path[:-1])[path[-1]] = draw(st.sampled_from(WEIRD_VALUES))
        return name, f"retype {path}", spec
    if kind == "number":
        numeric = [p for p, v in _paths(spec) if p and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numeric:
            return name, "none", spec
        path = draw(st.sampled_from(numeric))
        _get(spec, path[:-1])[path[-1]] = draw(st.sampled_from(HUGE if HUGE_OK else [0, -1, -0.5, 0.0001]))
        return name, f"number {path}", spec
    blocks = spec["blocks"]
    i = draw(st.integers(0, len(blocks) - 1))
    if kind == "dangling" and blocks[i].get("inputs"):
        j = draw(st.integers(0, len(blocks[i]["inputs"]) - 1))
        blocks[i]["inputs"][j] = draw(st.sampled_from(["nope", "group:nope", f"{blocks[i]['name']}.nope", ""]))
    elif kind == "cycle" and i + 1 < len(blocks):
        blocks[i].setdefault("inputs", []).append(blocks[draw(st.integers(i, len(blocks) - 1))]["name"])
    elif kind == "unknown_arg":
        blocks[i].setdefault("args", {})[draw(NAMES)] = draw(st.sampled_from(WEIRD_VALUES))
    elif kind == "unicode_name":
        blocks[i]["name"] = draw(NAMES)
    return name, f"{kind} blocks[{i}]", spec


def check(spec: dict) -> list[str]:
    """[] when the spec loads and builds; the SpecError's JSON paths when it is refused. Any other
    exception propagates: that is a finding."""
    import kzoo
    from kzoo.errors import SpecError

    try:
        kzoo.build(kzoo.load_spec(spec))
    except SpecError as e:
        assert e.problems, "a SpecError without problems"
        for path, message in e.problems:
            assert isinstance(path, str) and path and message, (path, message)
        return [path for path, _ in e.problems]
    return []


def generic(path: str) -> str:
    """blocks[3].args.units[0] -> blocks[].args.units[]: paths grouped for the report."""
    return re.sub(r"\[\d+\]", "[]", path)


def run(cases: int, seed: int = 0) -> dict:
    specs = zoo_specs()
    counts: Counter = Counter()
    paths: Counter = Counter()
    kinds: Counter = Counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=mutations(specs))
    def one(case):
        name, what, spec = case
        found = check(spec)
        counts["refused" if found else "built"] += 1
        kinds[what.split(" ")[0]] += 1
        for p in found:
            paths[generic(p)] += 1

    one()
    return {"cases": sum(counts.values()), "refused": counts["refused"], "built": counts["built"],
            "mutations": dict(kinds), "distinct_error_paths": len(paths), "error_paths": dict(paths.most_common())}


def run_graphs(cases: int, seed: int | None = None) -> dict:
    """`cases` random valid graphs (bench/fuzz_graphs.py): how many built and stepped, how many the spec
    checker refused (and where), and the block types drawn. Any other exception propagates.
    Derandomized by default; `seed` draws another fixed sequence (after the first, smallest graph)."""
    import hypothesis
    from fuzz_graphs import check_graph, valid_graphs

    counts: Counter = Counter()
    paths: Counter = Counter()
    types: Counter = Counter()

    @hypothesis.seed(seed or 0)
    @settings(max_examples=cases, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck))
    @given(spec=valid_graphs())
    def one(spec):
        found = check_graph(spec)
        counts["stepped" if found == "stepped" else "refused"] += 1
        types.update(b["type"] for b in spec["blocks"])
        for p in [] if found == "stepped" else found:
            paths[generic(p)] += 1

    one()
    return {"cases": sum(counts.values()), "built_and_stepped": counts["stepped"], "refused": counts["refused"],
            "refused_paths": dict(paths.most_common()), "block_types": dict(types.most_common()),
            "block_types_drawn": len(types)}


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="mutated zoo specs")
    ap.add_argument("--graphs", type=int, default=0, help="random valid graphs, each trained one step")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    import keras

    start = time.time()
    result = run(args.cases)
    result["seconds"] = round(time.time() - start, 1)
    print(json.dumps({k: v for k, v in result.items() if k != "error_paths"}, indent=1))
    print("error paths (grouped):")
    for path, n in result["error_paths"].items():
        print(f"  {n:5d}  {path}")
    if args.graphs:
        start = time.time()
        result["graphs"] = run_graphs(args.graphs)
        result["graphs"]["seconds"] = round(time.time() - start, 1)
        print("valid graphs:", json.dumps(result["graphs"], indent=1))
    result.update(backend=keras.backend.backend(), loadavg=[round(x, 2) for x in os.getloadavg()],
                  total_cases=result["cases"] + result.get("graphs", {}).get("cases", 0))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    sys.exit(main())
