"""Spec parsing: JSON -> JSON Schema -> semantic checks -> Spec.

Every problem is reported with its JSON path (`blocks[2].inputs[0]: ...`), all at once, so a
user fixes a spec in one pass. Nothing here builds Keras objects; `kzoo.graph.check_build`
adds the shape checks that need a symbolic build.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from kzoo.errors import SpecError
from kzoo.features import ID_TYPES, LIST_TYPES
from kzoo.graph import edges as block_edges, find_cycle, reachable, ref_block, ref_output
from kzoo.sparse.config import embedding_optimizer_problems
from kzoo.spec_schema import did_you_mean, json_path, schema, schema_problems  # noqa: F401  (re-exported)
from kzoo.tasks import task_class

DATASETS_DIR = Path(__file__).parent / "datasets"
LIST_KEYS = ("max_len", "sep", "pool")


@dataclass
class Spec:
    """A checked spec. `raw` is the JSON with `features` resolved inline."""

    raw: dict
    source: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> feature names, resolved

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def dataset(self) -> dict:
        return self.raw["features"]

    @property
    def features(self) -> list[dict]:
        """The dataset's features plus the spec's hashed crosses."""
        return all_features(self.raw)

    @property
    def blocks(self) -> list[dict]:
        return self.raw["blocks"]

    @property
    def tasks(self) -> list[dict]:
        return self.raw["tasks"]

    @property
    def train(self) -> dict:
        return self.raw.get("train", {})

    @property
    def labels(self) -> list[str]:
        label = self.dataset.get("label", "label")
        return [label] if isinstance(label, str) else list(label)

    def task_label(self, task: dict) -> str:
        return task.get("label") or self.labels[0]

    def used_features(self) -> list[str]:
        """Features read by some group, in schema order (the model's and the export's inputs)."""
        used = {f for names in self.groups.values() for f in names}
        return [f["name"] for f in self.features if f["name"] in used]

    def with_dataset(self, dataset: dict) -> "Spec":
        """The same graph on another dataset schema (e.g. `--data avazu:PATH`)."""
        raw = copy.deepcopy(self.raw)
        raw["features"] = copy.deepcopy(dataset)
        return check(raw, self.source)

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2)


def load_spec(spec, base_dir: str | Path | None = None) -> Spec:
    """A Spec from a path, the name of a zoo model ("dcn_v2"), a JSON string or a dict; raises SpecError
    naming every problem."""
    if isinstance(spec, Spec):
        return spec
    source = None
    if isinstance(spec, (str, Path)) and not str(spec).lstrip().startswith("{"):
        path = Path(spec)
        source = str(spec)
        if not path.is_file() and not path.suffix and len(path.parts) == 1:
            from kzoo import zoo_configs  # a zoo model's name: load_spec("dcn_v2")

            path = zoo_configs.path(str(spec)) or path
        if not path.is_file():
            from kzoo import zoo_configs

            hint = did_you_mean(path.stem, zoo_configs.names()) if not path.suffix else ""
            raise SpecError([("(file)", f"no such spec file or zoo model: {spec}{hint}")], source)
        text = path.read_text()
        base_dir = base_dir or path.parent
    else:
        text = spec if isinstance(spec, str) else None
    if text is not None:
        if not text.strip():
            raise SpecError([("(file)", "the spec is empty; a spec is a JSON object: `kzoo schema` prints its "
                                        "schema and zoo_configs/ holds examples")], source)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError([(f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}")], source) from None
    else:
        raw = copy.deepcopy(spec)
    if not isinstance(raw, dict):
        raise SpecError([("(root)", f"a spec is a JSON object, received {type(raw).__name__}")], source)
    if isinstance(raw.get("features"), dict) and "$ref" in raw["features"]:
        raw["features"] = _resolve_ref(raw["features"]["$ref"], base_dir, source)
    return check(raw, source)


def _resolve_ref(ref: str, base_dir, source) -> dict:
    """A dataset schema file: beside the spec first, then kzoo's bundled `datasets/`."""
    if not isinstance(ref, str) or not ref.endswith(".json"):
        raise SpecError([("features.$ref", f"expected a path to a .json dataset schema, received {ref!r}")], source)
    if Path(ref).is_absolute() or ".." in Path(ref).parts:
        # A spec reads only what travels with it: a file beside it (or below) or a bundled schema.
        raise SpecError([("features.$ref", f"{ref!r} points outside the spec's folder; a $ref names a file beside "
                                           "the spec (a relative path without '..') or a bundled schema such as "
                                           "'datasets/criteo.json'")], source)
    candidates = [Path(base_dir) / ref] if base_dir else []
    candidates.append(DATASETS_DIR / Path(ref).name)
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except json.JSONDecodeError as e:
                raise SpecError([("features.$ref", f"{c}: invalid JSON at line {e.lineno}: {e.msg}")], source) from None
    bundled = sorted(p.name for p in DATASETS_DIR.glob("*.json"))
    raise SpecError([("features.$ref", f"dataset schema {ref!r} not found beside the spec nor bundled "
                                       f"(bundled: {', '.join(bundled)})")], source)


def all_features(raw: dict) -> list[dict]:
    return raw["features"]["features"] + [{**c, "type": "cross"} for c in raw.get("crosses", [])]


def _feature_path(raw: dict, i: int) -> str:
    n = len(raw["features"]["features"])
    return f"features.features[{i}]" if i < n else f"crosses[{i - n}]"


def resolve_group(patterns: list[str], features: list[dict]) -> tuple[list[str], list[int]]:
    """Feature names matched by a group's patterns (schema order) and the indices of patterns matching none."""
    names = [f["name"] for f in features]
    kinds = {f["name"]: f["type"] for f in features}
    matched, empty = set(), []
    for i, pattern in enumerate(patterns):
        if pattern.startswith("type:"):
            hit = {n for n in names if kinds[n] == pattern[5:]}
        else:
            hit = set(fnmatch.filter(names, pattern))
        if not hit:
            empty.append(i)
        matched |= hit
    return [n for n in names if n in matched], empty


def check(raw: dict, source: str | None = None) -> Spec:
    problems = schema_problems(raw)
    if problems:
        raise SpecError(problems, source)
    problems = []
    add = lambda path, msg: problems.append((path, msg))  # noqa: E731

    features = all_features(raw)
    seen: dict[str, int] = {}
    for i, f in enumerate(features):
        where = _feature_path(raw, i)
        if f["name"] in seen:
            add(f"{where}.name", f"duplicate feature '{f['name']}' (also {_feature_path(raw, seen[f['name']])})")
        seen[f["name"]] = i
        modes = [k for k in ("vocab", "hash_buckets", "max_id") if k in f]
        if f["type"] in ID_TYPES and len(modes) > 1:
            add(where, f"{f['type']} feature '{f['name']}' sets {modes}; choose one of vocab, hash_buckets, max_id")
        if f["type"] in LIST_TYPES and "max_len" not in f:
            add(where, f"{f['type']} feature '{f['name']}' needs 'max_len' (the most recent items kept)")
        for key in [k for k in LIST_KEYS if k in f and f["type"] not in LIST_TYPES]:
            add(f"{where}.{key}", f"'{key}' applies to sequence and tags features; '{f['name']}' is {f['type']}")
        if f["type"] == "numeric" and modes:
            add(f"{where}.{modes[0]}", f"'{modes[0]}' applies to categorical features; '{f['name']}' is numeric")
        if f["type"] == "cross":
            if "hash_buckets" not in f:
                add(where, f"cross feature '{f['name']}' needs 'hash_buckets'")
            for j, col in enumerate(f.get("columns", [])):
                ftype = next((g["type"] for g in features if g["name"] == col), None)
                if ftype != "categorical":
                    add(f"{where}.columns[{j}]",
                        f"'{col}' is not a categorical feature{did_you_mean(col, [g['name'] for g in features if g['type'] == 'categorical'])}")
    _check_shared_tables(raw, features, add)
    labels = raw["features"].get("label", "label")
    labels = [labels] if isinstance(labels, str) else labels
    for label in labels:
        if label in seen:
            add("features.label", f"label '{label}' is also a feature")

    groups: dict[str, list[str]] = {}
    for gname, patterns in raw.get("groups", {}).items():
        names, empty = resolve_group(patterns, features)
        for i in empty:
            add(f"groups.{gname}[{i}]", f"pattern '{patterns[i]}' matches no feature"
                                        f"{did_you_mean(patterns[i], seen)}; use a name, a glob like 'C*', or type:numeric/type:categorical/type:cross")
        groups[gname] = names

    from kzoo.blocks.registry import _REGISTRY, constructor_args, unknown_type_message

    block_names: dict[str, int] = {}
    for i, b in enumerate(raw["blocks"]):
        if b["name"] in block_names:
            add(f"blocks[{i}].name", f"duplicate block name '{b['name']}' (also blocks[{block_names[b['name']]}])")
        elif b["name"] in groups:
            add(f"blocks[{i}].name", f"block name '{b['name']}' is also a group name; rename one")
        block_names.setdefault(b["name"], i)

    for i, b in enumerate(raw["blocks"]):
        cls = _REGISTRY.get(b["type"])
        if cls is None:
            add(f"blocks[{i}].type", unknown_type_message(b["type"]))
        inputs = b.get("inputs", [])
        for j, ref in enumerate(inputs):
            if ref.startswith("group:"):
                g = ref[6:]
                if g not in groups:
                    add(f"blocks[{i}].inputs[{j}]", f"'{g}' is not a group{did_you_mean(g, groups)}; groups: {sorted(groups)}")
                elif cls is not None and not cls.feature_block:
                    add(f"blocks[{i}].inputs[{j}]", f"{b['type']} reads block outputs, not a feature group; "
                                                    "put a FeatureEmbedding block between")
            elif ref_block(ref) not in block_names:
                hint = did_you_mean(ref, list(block_names) + [f"group:{g}" for g in groups])
                add(f"blocks[{i}].inputs[{j}]", f"'{ref}' is not a block or group{hint}")
            elif (problem := _output_problem(ref, raw["blocks"][block_names[ref_block(ref)]])) is not None:
                add(f"blocks[{i}].inputs[{j}]", problem)
            elif ref_block(ref) == b["name"]:
                add(f"blocks[{i}].inputs[{j}]", f"block '{ref}' reads itself")
            elif cls is not None and cls.feature_block:
                add(f"blocks[{i}].inputs[{j}]", f"{b['type']} reads a feature group ('group:NAME'), not block '{ref}'")
        if cls is None:
            continue
        lo, hi = cls.arity
        n = len(inputs) if not cls.feature_block else (1 if inputs else 0)
        if cls.feature_block and len(inputs) != 1:
            add(f"blocks[{i}].inputs", f"{b['type']} takes exactly one 'group:NAME' input, received {len(inputs)}")
        elif not cls.feature_block and (n < lo or (hi is not None and n > hi)):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            add(f"blocks[{i}].inputs", f"{b['type']} takes {want} input(s), received {n}")
        allowed = constructor_args(cls) - ({"features"} if cls.feature_block else set())
        for arg in b.get("args", {}):
            if arg not in allowed:
                add(f"blocks[{i}].args.{arg}", f"{b['type']} has no argument '{arg}'{did_you_mean(arg, allowed)}; "
                                               f"it takes {sorted(allowed)}")

    edges = block_edges(raw["blocks"])
    task_names: dict[str, int] = {}
    for i, t in enumerate(raw["tasks"]):
        problems.extend(task_class(t.get("type", "binary"), t).problems(t, f"tasks[{i}]"))
        if t["name"] in task_names:
            add(f"tasks[{i}].name", f"duplicate task name '{t['name']}'")
        task_names[t["name"]] = i
        for key, ref in task_refs(t).items():
            if ref_block(ref) not in block_names:
                add(f"tasks[{i}].{key}", f"'{ref}' is not a block{did_you_mean(ref, block_names)}")
            elif (problem := _output_problem(ref, raw["blocks"][block_names[ref_block(ref)]])) is not None:
                add(f"tasks[{i}].{key}", problem)
        for j, col in enumerate(t.get("report_by", [])):
            if col not in seen:
                add(f"tasks[{i}].report_by[{j}]", f"'{col}' is not a feature of the dataset{did_you_mean(col, seen)}")
        if t.get("gauc_by") and t["gauc_by"] not in seen:
            add(f"tasks[{i}].gauc_by", f"'{t['gauc_by']}' is not a feature of the dataset{did_you_mean(t['gauc_by'], seen)}")
        if t.get("label") and t["label"] not in labels:
            add(f"tasks[{i}].label", f"'{t['label']}' is not a label column of the dataset (labels: {labels})")
    for i, t in enumerate(raw["tasks"]):
        given = t.get("given")
        if given is None:
            continue
        if given == t["name"]:
            add(f"tasks[{i}].given", f"task '{given}' cannot be given itself")
        elif given not in task_names:
            add(f"tasks[{i}].given", f"'{given}' is not a task{did_you_mean(given, task_names)}")
        elif raw["tasks"][task_names[given]].get("type", "binary") != "binary":
            add(f"tasks[{i}].given", f"'{given}' is not a binary task; a task can only be conditional on a probability")
    chain = find_cycle({t["name"]: [t["given"]] for t in raw["tasks"] if t.get("given") in task_names
                        and t.get("given") != t["name"]})
    if chain:
        add(f"tasks[{task_names[chain[0]]}].given", f"the `given` chain is a cycle: {' -> '.join(chain)}")
    for side, ref in raw.get("export", {}).get("towers", {}).items():
        if ref_block(ref) not in block_names:
            add(f"export.towers.{side}", f"'{ref}' is not a block{did_you_mean(ref, block_names)}")
    for i, name in enumerate(raw.get("export", {}).get("tasks", [])):
        if name not in task_names:
            add(f"export.tasks[{i}]", f"'{name}' is not a task{did_you_mean(name, task_names)}")
    monitor = raw.get("train", {}).get("early_stopping", {}).get("monitor")
    if monitor is not None and monitor not in (logged := logged_metrics(raw)):
        add("train.early_stopping.monitor", f"'{monitor}' is not a metric this spec logs"
                                            f"{did_you_mean(monitor, logged)}; it logs {logged}")
    balancing = raw.get("train", {}).get("balancing", {"type": "static"})
    if balancing["type"] != "static" and len(raw["tasks"]) < 2:
        add("train.balancing.type", f"'{balancing['type']}' balances two or more tasks; this spec has one")
    if balancing["type"] == "gradnorm" and "shared" not in balancing:
        add("train.balancing", "gradnorm needs 'shared': the block whose weights the task gradient norms are taken at")
    for key in [k for k in ("alpha", "shared") if k in balancing and balancing["type"] != "gradnorm"]:
        add(f"train.balancing.{key}", f"'{key}' applies to gradnorm, not to '{balancing['type']}'")
    if "shared" in balancing and balancing["shared"] not in block_names:
        add("train.balancing.shared", f"'{balancing['shared']}' is not a block{did_you_mean(balancing['shared'], block_names)}")

    _check_calibration(raw, task_names, add)
    for path, message in embedding_optimizer_problems(raw.get("train", {})):  # kzoo.sparse
        add(path, message)
    _check_stream_split(raw.get("train", {}).get("split", {}), add)

    cycle = find_cycle(edges)
    if cycle:
        add(f"blocks[{block_names[cycle[0]]}].inputs", f"cycle: {' -> '.join(cycle)}")
    elif not problems:
        used = reachable(task_blocks(raw), edges)
        for i, b in enumerate(raw["blocks"]):
            if b["name"] not in used:
                add(f"blocks[{i}]", f"block '{b['name']}' is not used by any task or block; remove it or wire it in")
        read_groups = {x[6:] for b in raw["blocks"] for x in b.get("inputs", []) if x.startswith("group:")}
        for g in groups:
            if g not in read_groups:
                add(f"groups.{g}", f"group '{g}' is read by no block")
    if problems:
        raise SpecError(problems, source)
    read = {x[6:] for b in raw["blocks"] if b["name"] in reachable(task_blocks(raw), edges)
            for x in b.get("inputs", []) if x.startswith("group:")}
    spec = Spec(raw=raw, source=source, groups={g: groups[g] for g in groups if g in read})
    late = [p for i, t in enumerate(raw["tasks"])
            for p in task_class(t.get("type", "binary"), t)(t, spec.task_label(t)).graph_problems(spec, f"tasks[{i}]")]
    if late:
        raise SpecError(late, source)
    return spec


def task_refs(task: dict) -> dict[str, str]:
    """{spec key: block output} a task entry reads: `input`, or a retrieval task's `query` and `item`."""
    return {k: task[k] for k in ("input", "query", "item") if k in task}


def task_blocks(raw: dict) -> list[str]:
    """The blocks the spec's tasks read (the roots of the used graph)."""
    return [ref_block(r) for t in raw["tasks"] for r in task_refs(t).values()]


def _check_shared_tables(raw: dict, features: list[dict], add) -> None:
    """Features sharing an `embedding` table share its ids: one id mode (a vocabulary learned on all
    of them, the same hash_buckets, or the same max_id), and none of them numeric."""
    first: dict[str, int] = {}
    for i, f in enumerate(features):
        table = f.get("embedding")
        if not table:
            continue
        where = _feature_path(raw, i)
        if f["type"] in ("numeric", "cross"):
            add(f"{where}.embedding", f"'{f['name']}' is {f['type']}; only categorical, sequence and tags "
                                      "features share an embedding table")
            continue
        if table not in first:
            first[table] = i
            continue
        g = features[first[table]]
        mode = lambda x: (("hash_buckets", x["hash_buckets"]) if "hash_buckets" in x  # noqa: E731
                          else ("max_id", x["max_id"]) if "max_id" in x else ("vocab", None))
        if mode(f) != mode(g):
            add(f"{where}.embedding", f"'{f['name']}' shares table '{table}' with '{g['name']}' but maps values to "
                                      f"ids differently ({mode(f)[0]} vs {mode(g)[0]}); give both the same "
                                      "vocab/hash_buckets/max_id")


def _output_problem(ref: str, block: dict) -> str | None:
    """What is wrong with naming `ref` ("block" or "block.output") for a block of several outputs, or None."""
    from kzoo.blocks.registry import _REGISTRY

    cls = _REGISTRY.get(block["type"])
    if cls is None:
        return None  # reported at the block's type
    try:
        names = cls.output_names(block.get("args", {}))
    except (TypeError, ValueError):
        return None  # bad arguments are reported at the block
    output = ref_output(ref)
    if names is None and output is not None:
        return f"block '{block['name']}' ({block['type']}) has one output; name it '{block['name']}', not '{ref}'"
    if names is not None and output is None:
        return (f"block '{ref}' ({block['type']}) has several outputs; name one: "
                f"{', '.join(repr(block['name'] + '.' + n) for n in names)}")
    if names is not None and output not in names:
        return (f"block '{block['name']}' has no output '{output}'{did_you_mean(output, names)}; "
                f"its outputs: {names}")
    return None


def task_metrics(task: dict) -> list[str]:
    """The metrics a task logs during fit: its `metrics`, else its type's defaults (kzoo.tasks)."""
    return task_class(task.get("type", "binary")).metric_names_of(task)


def logged_name(raw: dict, task: str, metric: str) -> str:
    """The name Keras logs `metric` of `task` under: `auc` with one task, `<task>_auc` with several."""
    return metric if len(raw["tasks"]) == 1 else f"{task}_{metric}"


def logged_metrics(raw: dict) -> list[str]:
    """The names Keras logs for this spec, as `train.early_stopping.monitor` may name them: the
    total `loss`, each task's metrics (and its own loss when there are several tasks); `val_` for
    the validation split."""
    tasks = raw["tasks"]
    own_loss = [] if len(tasks) == 1 else ["loss"]
    names = ["loss"] + [logged_name(raw, t["name"], m) for t in tasks for m in own_loss + task_metrics(t)]
    return names + [f"val_{n}" for n in names]


def calibration_problem(task: dict) -> str | None:
    """Why post-hoc calibration (kzoo.calibration) cannot apply to a task entry, or None: it fits a
    plain binary task's served probability to 0/1 labels."""
    kind = task.get("type", "binary")
    if kind != "binary":
        return f"task '{task['name']}' is a {kind} task; calibration applies to binary tasks (probabilities, 0/1 labels)"
    if task.get("given"):
        return (f"task '{task['name']}' is conditional (given '{task['given']}'): its joint is computed in the graph "
                "from its parent's probability; calibrate the parent task instead")
    loss = task.get("loss")
    if (loss.get("type") if isinstance(loss, dict) else loss) == "kl":
        return f"task '{task['name']}' learns a teacher's probabilities (loss 'kl'), not 0/1 labels to calibrate to"
    return None


def _check_stream_split(split: dict, add) -> None:
    """A split by hash names its key; files are named only by a split by file (kzoo.streaming)."""
    by = split.get("by", "random")
    if by == "hash" and "key" not in split:
        add("train.split", 'a split by hash needs "key": the column whose value decides the split (a user id)')
    if "key" in split and by != "hash":
        add("train.split.key", f"'key' applies to a split by hash, not by {by}")
    for name in ("validation_files", "test_files"):
        if name in split and by != "file":
            add(f"train.split.{name}", f"'{name}' applies to a split by file, not by {by}")


def _check_calibration(raw: dict, task_names: dict, add) -> None:
    """The `calibration` block: its tasks exist and are calibratable, and there is a validation split."""
    block = raw.get("calibration")
    if block is None:
        return
    if "tasks" in block:
        for i, name in enumerate(block["tasks"]):
            if name not in task_names:
                add(f"calibration.tasks[{i}]", f"'{name}' is not a task{did_you_mean(name, task_names)}")
            elif (problem := calibration_problem(raw["tasks"][task_names[name]])) is not None:
                add(f"calibration.tasks[{i}]", problem)
    elif not any(calibration_problem(t) is None for t in raw["tasks"]):
        add("calibration", "this spec has no binary task to calibrate (a plain binary task with 0/1 labels)")
    if raw.get("train", {}).get("split", {}).get("validation", 0.1) == 0:
        add("calibration", "calibration is fitted on the validation split, and train.split.validation is 0; "
                           "give it a fraction such as 0.1")
