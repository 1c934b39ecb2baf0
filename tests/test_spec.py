"""Spec checks: every bad spec is refused before anything trains, naming its JSON path."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kzoo.graph import check_build
from kzoo.spec import SpecError, load_spec, schema

REPO = Path(__file__).resolve().parents[1]
ZOO = sorted((REPO / "zoo_configs").glob("*.json"))

FEATURES = {"label": "label", "features": [
    {"name": "I1", "type": "numeric", "norm": "log"},
    {"name": "I2", "type": "numeric"},
    {"name": "C1", "type": "categorical", "vocab": {"min_count": 1}},
    {"name": "C2", "type": "categorical", "hash_buckets": 100},
]}
GOOD = {
    "name": "t",
    "features": FEATURES,
    "groups": {"all": ["*"]},
    "blocks": [
        {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
        {"name": "deep", "type": "MLP", "inputs": ["emb"], "args": {"units": [8]}},
        {"name": "cross", "type": "CrossNetV2", "inputs": ["emb"], "args": {"layers": 1}},
        {"name": "top", "type": "Concat", "inputs": ["cross", "deep"]},
    ],
    "tasks": [{"name": "ctr", "input": "top"}],
}


def mutate(fn):
    spec = copy.deepcopy(GOOD)
    fn(spec)
    return spec


def set_(path, value):
    def fn(spec):
        node = spec
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return fn


BAD = {
    "unknown block type": (set_(["blocks", 1, "type"], "MPL"), "blocks[1].type", "did you mean 'MLP'"),
    "undefined input": (set_(["blocks", 1, "inputs"], ["embb"]), "blocks[1].inputs[0]", "did you mean 'emb'"),
    "cycle": (lambda s: s["blocks"][0].update(type="MLP", inputs=["top"], args={"units": [4]}),
              "blocks[", "cycle"),
    "unused block": (lambda s: s["blocks"].append({"name": "extra", "type": "MLP", "inputs": ["emb"],
                                                   "args": {"units": [2]}}), "blocks[4]", "not used"),
    "duplicate name": (set_(["blocks", 2, "name"], "deep"), "blocks[2].name", "duplicate block name"),
    "unknown arg": (set_(["blocks", 1, "args"], {"unit": [8]}), "blocks[1].args.unit", "did you mean 'units'"),
    "group pattern matches nothing": (set_(["groups", "all"], ["*", "D*"]), "groups.all[1]", "matches no feature"),
    "task reads missing block": (set_(["tasks", 0, "input"], "topp"), "tasks[0].input", "did you mean 'top'"),
    "unknown group": (set_(["blocks", 0, "inputs"], ["group:alll"]), "blocks[0].inputs[0]", "did you mean 'all'"),
    "missing required key": (lambda s: s["blocks"][1].pop("type"), "blocks[1]", "'type' is a required property"),
    "unknown top-level key": (set_(["trian"], {}), "(root)", "did you mean 'train'"),
    "bad optimizer": (set_(["train"], {"optimizer": {"type": "adamm"}}), "train.optimizer.type", "did you mean 'adam'"),
    "bad loss": (set_(["tasks", 0, "loss"], "bec"), "tasks[0].loss", "bec"),
    "negative batch size": (set_(["train"], {"batch_size": -4}), "train.batch_size", "minimum"),
    "bad arg value": (set_(["blocks", 1, "args"], {"units": [8, -1]}), "blocks[1]", "positive integer"),
    "shape mismatch": (lambda s: s["blocks"][3].update(type="Add"), "blocks[3]", "one shape"),
    "feature block fed a block": (set_(["blocks", 0, "inputs"], ["deep"]), "blocks[0].inputs", "feature group"),
    "group fed to a plain block": (set_(["blocks", 1, "inputs"], ["group:all"]), "blocks[1].inputs[0]",
                                   "FeatureEmbedding"),
    "wrong arity": (set_(["blocks", 1, "inputs"], ["emb", "cross"]), "blocks[1].inputs", "takes 1 input"),
    "duplicate feature": (lambda s: s["features"]["features"].append({"name": "C1", "type": "categorical"}),
                          "features.features[4].name", "duplicate feature"),
    "numeric with vocab": (lambda s: s["features"]["features"][0].update(vocab={}), "features.features[0].vocab",
                           "numeric"),
    "cross of unknown column": (lambda s: s["features"]["features"].append(
        {"name": "X", "type": "cross", "columns": ["C1", "C22"], "hash_buckets": 10}),
        "features.features[4].columns[1]", "did you mean"),
    "unknown label": (set_(["tasks", 0, "label"], "click"), "tasks[0].label", "not a label column"),
    "bad feature type": (lambda s: s["features"]["features"][1].update(type="numerc"), "features.features[1].type",
                         "did you mean 'numeric'"),
    "dataset ref missing": (set_(["features"], {"$ref": "datasets/nope.json"}), "features.$ref", "not found"),
    "early stopping on an unlogged metric": (set_(["train"], {"early_stopping": {"monitor": "val_acu"}}),
                                             "train.early_stopping.monitor", "did you mean 'val_auc'"),
    "wrong arg type": (set_(["blocks", 2, "args"], {"layers": "three"}), "blocks[2].args.layers",
                       "'three' is not of type 'integer'"),
    "missing required arg": (lambda s: s["blocks"][0].pop("args"), "blocks[0].args", "['dim']"),
    "multi-task monitor without the task": (
        lambda s: (s["tasks"].append({"name": "cvr", "input": "top"}),
                   s.update(train={"early_stopping": {"monitor": "val_auc"}})),
        "train.early_stopping.monitor", "'val_cvr_auc'"),
}


def test_good_spec_builds():
    check_build(load_spec(GOOD))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_names_json_path(case):
    fn, path, fragment = BAD[case]
    with pytest.raises(SpecError) as info:
        check_build(load_spec(mutate(fn)))
    text = str(info.value)
    assert any(p.startswith(path) for p, _ in info.value.problems), text
    assert fragment in text, text


def test_all_problems_reported_at_once():
    spec = mutate(lambda s: (s["blocks"][1].update(type="MPL"), s["tasks"][0].update(input="nope")))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    paths = [p for p, _ in info.value.problems]
    assert "blocks[1].type" in paths and "tasks[0].input" in paths


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"name": "x",\n "blocks": [,]}')
    with pytest.raises(SpecError, match="line 2"):
        load_spec(p)


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_configs_validate_and_build(path):
    spec = load_spec(path)
    check_build(spec)
    assert spec.name == path.stem


def test_schema_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    for path in ZOO:
        jsonschema.Draft202012Validator(schema()).validate(json.loads(path.read_text()))


def test_cli_validate_exit_codes(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(mutate(set_(["blocks", 1, "inputs"], ["embb"]))))
    good = [REPO / "zoo_configs" / "dcn_v2.json", REPO / "zoo_configs" / "rocket_launching.json"]
    ok = subprocess.run([sys.executable, "-m", "kzoo.cli", "validate", *map(str, good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run([sys.executable, "-m", "kzoo.cli", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{bad}: blocks[1].inputs[0]: 'embb' is not a block or group (did you mean 'emb'?)" in res.stderr


def printed_schema(capsys) -> dict:
    from kzoo.cli import main

    assert main(["schema"]) == 0
    return json.loads(capsys.readouterr().out)


def masknet_spec(**args) -> dict:
    spec = json.loads((REPO / "zoo_configs" / "masknet.json").read_text())
    block = next(b for b in spec["blocks"] if b["type"] == "MaskNet")
    block["args"] = args
    return spec


def test_printed_schema_constrains_block_types_args_and_tasks(capsys):
    import jsonschema

    from kzoo.blocks.registry import block_types
    from kzoo.tasks import task_types

    printed = printed_schema(capsys)
    jsonschema.Draft202012Validator.check_schema(printed)
    block = printed["$defs"]["block"]
    assert block["properties"]["type"]["enum"] == list(block_types())
    assert printed["$defs"]["task"]["properties"]["type"]["enum"] == list(task_types())
    rules = {r["if"]["properties"]["type"]["const"]: r["then"]["properties"]["args"] for r in block["allOf"]}
    assert sorted(rules) == sorted(block_types())
    masknet = rules["MaskNet"]
    assert masknet["additionalProperties"] is False and "required" not in masknet
    want = {"mode": ("string", "serial"), "blocks": ("integer", 3), "hidden_units": ("integer", 64),
            "reduction_ratio": ("number", 1.0), "aggregation_dim": (["integer", "null"], None),
            "dropout": ("number", 0.0)}
    assert {k: (v["type"], v["default"]) for k, v in masknet["properties"].items()} == want
    assert "Number of MaskBlocks" in masknet["properties"]["blocks"]["description"]
    assert rules["MaskBlock"]["required"] == ["hidden_units"]
    assert "features" not in rules["FeatureEmbedding"]["properties"]

    validator = jsonschema.Draft202012Validator(printed)
    assert not list(validator.iter_errors(masknet_spec(mode="serial", blocks=2, aggregation_dim=None)))
    errors = list(validator.iter_errors(masknet_spec(blocks=3, hiden_units=64)))
    assert [(list(e.absolute_path), e.validator) for e in errors] == [(["blocks", 1, "args"], "additionalProperties")]
    errors = list(validator.iter_errors(masknet_spec(blocks="three")))
    assert [(list(e.absolute_path), e.message) for e in errors] == [
        (["blocks", 1, "args", "blocks"], "'three' is not of type 'integer'")]
    errors = list(validator.iter_errors(masknet_spec(blocks=1.5)))
    assert [list(e.absolute_path) for e in errors] == [["blocks", 1, "args", "blocks"]]
    for path in ZOO:
        validator.validate(json.loads(path.read_text()))


def test_schema_errors_for_block_args_read_like_the_semantic_checks():
    spec = mutate(set_(["blocks", 2, "args"], {"layers": "three", "low_rnak": 4}))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert ("blocks[2].args.layers", "'three' is not of type 'integer'") in info.value.problems
    assert any(p == "blocks[2].args.low_rnak" and m.startswith("CrossNetV2 has no argument 'low_rnak' "
                                                              "(did you mean 'low_rank'?)")
               for p, m in info.value.problems), info.value.problems
    # Unknown types and args alone leave the schema stage to the semantic checks, so every
    # other problem of the spec is reported with them.
    spec = mutate(lambda s: (s["blocks"][1].update(type="MPL"), s["blocks"][2].update(args={"layer": 1}),
                             s["tasks"][0].update(input="nope")))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    problems = dict(info.value.problems)
    assert problems["blocks[1].type"].startswith("unknown block type 'MPL' (did you mean 'MLP'?)")
    assert problems["blocks[2].args.layer"].startswith("CrossNetV2 has no argument 'layer' (did you mean 'layers'?)")
    assert "tasks[0].input" in problems


def test_cli_list_describes_a_block_type(capsys):
    from kzoo.blocks.registry import arguments, block_types
    from kzoo.cli import main

    assert main(["list", "MaskNet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("MaskNet")
    for line in ("mode: str = 'serial'", "blocks: int = 3", "hidden_units: int = 64", "reduction_ratio: float = 1.0",
                 "aggregation_dim: int | None = None", "dropout: float = 0.0"):
        assert f"  {line}" in lines, out
    assert len(arguments(block_types()["MaskNet"])) == 6
    assert main(["list", "MaskBlock"]) == 0
    assert "  hidden_units: int  (required)" in capsys.readouterr().out.splitlines()
