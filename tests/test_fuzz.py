"""Spec fuzzing (bench/fuzz_specs.py at a fixed seed): mutated zoo specs build or are refused with a
SpecError naming JSON paths, never another exception. `python bench/fuzz_specs.py --cases 1000`
runs the long version."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from fuzz_specs import generic, run  # noqa: E402


def test_two_hundred_mutated_specs_give_spec_errors_with_json_paths_and_no_traceback():
    result = run(200)  # derandomized: the same 200 cases every run
    assert result["cases"] == 200
    # Both outcomes occur (a mutation can leave a spec valid), and the refusals name many places.
    assert result["refused"] > 100 and result["built"] > 0, result
    assert result["distinct_error_paths"] >= 20, result["error_paths"]
    assert {"blocks[].inputs", "blocks[].name"} <= set(result["error_paths"]), result["error_paths"]


def test_paths_are_grouped_by_position():
    assert generic("blocks[3].args.units[0]") == "blocks[].args.units[]"
