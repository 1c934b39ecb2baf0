"""Spec fuzzing (bench/fuzz_specs.py at a fixed seed): mutated zoo specs build or are refused with a
SpecError naming JSON paths, never another exception; random valid graphs drawn from the block
registry (bench/fuzz_graphs.py) build and train one step. `python bench/fuzz_specs.py --cases 900
--graphs 100` runs the long version."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from fuzz_graphs import EXCLUDED, FEATURE_BLOCKS, MULTITASK, RECIPES  # noqa: E402
from fuzz_specs import generic, run, run_graphs  # noqa: E402


def test_two_hundred_mutated_specs_give_spec_errors_with_json_paths_and_no_traceback():
    result = run(200)  # derandomized: the same 200 cases every run
    assert result["cases"] == 200
    # Both outcomes occur (a mutation can leave a spec valid), and the refusals name many places.
    assert result["refused"] > 100 and result["built"] > 0, result
    assert result["distinct_error_paths"] >= 20, result["error_paths"]
    assert {"blocks[].inputs", "blocks[].name"} <= set(result["error_paths"]), result["error_paths"]


def test_paths_are_grouped_by_position():
    assert generic("blocks[3].args.units[0]") == "blocks[].args.units[]"


def test_random_valid_graphs_from_the_registry_build_and_train_one_step():
    # A fixed seed: the same 2 graphs every run, the smallest (FeatureEmbedding -> CIN) and one of 7 block
    # types (WuKongLayer, LightSE, FETower, ...) under a regression task; the bench draws 100.
    result = run_graphs(2, seed=1)
    assert result["cases"] == 2 and result["built_and_stepped"] == 2, result
    assert result["block_types_drawn"] >= 7, result["block_types"]


def test_every_registered_block_type_is_drawn_or_excluded_with_a_reason():
    from kzoo.blocks.registry import block_types

    drawn = [*RECIPES, *MULTITASK, *FEATURE_BLOCKS]
    assert len(set(drawn)) == len(drawn) and not set(drawn) & set(EXCLUDED)
    assert set(block_types()) == set(drawn) | set(EXCLUDED)
    assert all(reason for reason in EXCLUDED.values())
