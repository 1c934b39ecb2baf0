"""What bench/quality.py and bench/tune.py share: the datasets, the ranking models and their specs
on each dataset, and the tuning knobs with the settings file bench/tune.py writes.

quality.py trains the zoo configs as they are or with the tuned settings; tune.py searches those
settings. Both import this module and neither imports the other.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RANKING = ["lr", "fm", "wide_deep", "deepfm", "multi_tower", "dcn", "dcn_v2", "dlrm", "xdeepfm", "masknet",
           "wukong", "rocket_launching"]

# Avazu has no numeric columns and other names: the configs that name Criteo columns or rely on
# dense features get the equivalent wiring for Avazu's schema. Everything else is unchanged.
AVAZU_OVERRIDES = {
    "wide_deep": {"groups": {"wide_features": ["*"], "deep_features": ["type:categorical"]}, "crosses": [
        {"name": "banner_x_site_category", "columns": ["banner_pos", "site_category"], "hash_buckets": 1000},
        {"name": "app_category_x_device_type", "columns": ["app_category", "device_type"], "hash_buckets": 1000},
        {"name": "C1_x_conn", "columns": ["C1", "device_conn_type"], "hash_buckets": 1000}]},
    "multi_tower": {
        "groups": {"site_app": ["site_*", "app_*"], "device": ["device_*"],
                   "context": ["C*", "banner_pos", "hour_of_day", "day_of_week"]},
        "blocks": [
            {"name": "emb_site_app", "type": "FeatureEmbedding", "inputs": ["group:site_app"], "args": {"dim": 16}},
            {"name": "site_app_tower", "type": "MLP", "inputs": ["emb_site_app"], "args": {"units": [128, 64]}},
            {"name": "emb_device", "type": "FeatureEmbedding", "inputs": ["group:device"], "args": {"dim": 8}},
            {"name": "device_tower", "type": "MLP", "inputs": ["emb_device"], "args": {"units": [64]}},
            {"name": "emb_context", "type": "FeatureEmbedding", "inputs": ["group:context"], "args": {"dim": 8}},
            {"name": "context_tower", "type": "MLP", "inputs": ["emb_context"], "args": {"units": [64]}},
            {"name": "towers", "type": "Concat", "inputs": ["site_app_tower", "device_tower", "context_tower"]},
            {"name": "fusion", "type": "MLP", "inputs": ["towers"], "args": {"units": [128, 64]}}]},
    "dlrm": {
        "groups": {"sparse": ["type:categorical"]},
        "blocks": [
            {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:sparse"], "args": {"dim": 16}},
            {"name": "interaction", "type": "DotInteraction", "inputs": ["emb"]},
            {"name": "joined", "type": "Concat", "inputs": ["emb", "interaction"]},
            {"name": "top", "type": "MLP", "inputs": ["joined"], "args": {"units": [256, 128]}}]},
}
DATA = {"criteo": "criteo/criteo_train_head10k.txt", "avazu": "avazu/avazu_train_head10k.csv"}


def data_dir() -> Path:
    return Path(os.environ.get("KZOO_DATA_DIR", REPO.parent / "shared" / "data"))


def spec_for(model: str, dataset: str) -> dict:
    """The zoo config of `model` (a dict) on `dataset`'s bundled schema, rewired for Avazu if needed."""
    from kzoo import data as kdata

    raw = json.loads((REPO / "zoo_configs" / f"{model}.json").read_text())
    raw["features"] = kdata.bundled_dataset(dataset)
    if dataset == "avazu" and model in AVAZU_OVERRIDES:
        raw.update(copy.deepcopy(AVAZU_OVERRIDES[model]))
    return raw


# The tuning knobs, in the order bench/tune.py searches them; the first value is the zoo default.
KNOBS = [("learning_rate", [0.003, 0.001]), ("dim_scale", [1.0, 0.5]), ("embedding_l2", [0.0, 0.01, 0.1]),
         ("dropout", [0.0, 0.2])]
DEFAULT = {k: values[0] for k, values in KNOBS}
MAX_EPOCHS = 3
TUNED_JSON = REPO / "bench" / "tuned.json"  # bench/tune.py's chosen settings: {dataset: {model: {"setting", ...}}}


def tuned_setting(model: str, dataset: str) -> dict:
    """The setting bench/tune.py chose for `model` on `dataset` (from TUNED_JSON)."""
    tuned = json.loads(TUNED_JSON.read_text()) if TUNED_JSON.is_file() else {}
    if model not in tuned.get(dataset, {}):
        raise SystemExit(f"no tuned setting for {model} on {dataset} in {TUNED_JSON}: run bench/tune.py first")
    return tuned[dataset][model]["setting"]


def block_class(block: dict):
    from kzoo.blocks.registry import get_block

    return get_block(block["type"])


def holds_tables(block: dict) -> bool:
    """Whether a spec block's weights are embedding tables (FeatureEmbedding, Linear, ...)."""
    return bool(getattr(block_class(block), "holds_tables", False))


def takes_argument(block: dict, name: str) -> bool:
    """Whether a spec block's type has constructor argument `name`."""
    from kzoo.blocks.registry import arguments

    return any(a["name"] == name for a in arguments(block_class(block)))


def apply_setting(raw: dict, setting: dict) -> dict:
    """`raw` (a zoo spec as a dict) with the knobs of `setting` applied; `raw` is not changed.

    dim_scale scales the `dim` of the blocks holding embedding tables; dropout sets the `dropout`
    argument of every block that has one; embedding_l2 is `train.embedding_l2`.
    """
    raw = copy.deepcopy(raw)
    s = {**DEFAULT, **setting}
    train = raw.setdefault("train", {})
    train["epochs"] = MAX_EPOCHS
    train["early_stopping"] = {"monitor": monitor(raw), "mode": "max", "patience": 0}
    train["optimizer"] = {**train.get("optimizer", {"type": "adam"}), "learning_rate": s["learning_rate"]}
    if s["embedding_l2"]:
        train["embedding_l2"] = s["embedding_l2"]
    blocks = {b["name"]: b for b in raw["blocks"]}
    for block in raw["blocks"]:
        args = block.setdefault("args", {})
        if holds_tables(block) and "dim" in args and s["dim_scale"] != 1.0:
            args["dim"] = max(2, round(args["dim"] * s["dim_scale"]))
        if s["dropout"] and takes_argument(block, "dropout"):
            args["dropout"] = s["dropout"]
    # DLRM: the dense tower's last width is the embedding size the dot interaction pairs it with.
    for block in raw["blocks"]:
        if block["type"] == "DotInteraction":
            ins = [blocks[n] for n in block.get("inputs", []) if n in blocks]
            dims = {b["args"]["dim"] for b in ins if holds_tables(b) and "dim" in b["args"]}
            for b in ins:
                if takes_argument(b, "units") and "units" in b["args"] and len(dims) == 1:
                    b["args"]["units"] = b["args"]["units"][:-1] + [next(iter(dims))]
    return raw


def monitor(raw: dict) -> str:
    """Validation AUC of the served task (the first of `export.tasks`, else the first task)."""
    from kzoo.spec import logged_name

    return "val_" + logged_name(raw, raw.get("export", {}).get("tasks", [raw["tasks"][0]["name"]])[0], "auc")


def write_section(doc: Path, start: str, end: str, section: str) -> None:
    """Put `section` (which begins with `start` and ends with `end`) into the markdown file `doc` in
    place of what lies between those markers; appended once when the markers are absent."""
    text = doc.read_text() if doc.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


# ------------------------------------------------------------------ what every benchmark script prints

def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    import sys
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ms(values, fmt: str = ".4f") -> str:
    """"mean ± sd" of the non-None values ("–" for none, the value alone for one)."""
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def environment(backend: str) -> dict:
    """Date, machine, Keras version, backend and Python of a benchmark run, for its docs section."""
    import platform
    import time

    import keras

    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU",
            "keras": keras.__version__, "backend": backend, "python": platform.python_version()}
