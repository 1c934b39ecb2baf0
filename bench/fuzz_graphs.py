"""Random *valid* block graphs from the registry (issue 13), for bench/fuzz_specs.py and tests/test_fuzz.py.

A hypothesis strategy draws a spec the way a user writes one: feature blocks over random feature
groups of a small dataset (numbers, vocabulary / bounded / hashed ids, a shared item table, a
history and tags), then blocks wired to earlier outputs of a shape they take, with argument values
in their documented ranges, then one or two tasks (binary, regression; a multi-task block's
outputs each feed a task). Every block type the registry holds is either drawn (RECIPES) or
listed in EXCLUDED with the reason, and a test fails when a new block type is in neither.

    check_graph(spec) -> "stepped"     built (kzoo.build), compiled (kzoo.compile), one train step on a
                                       tiny random batch of preprocessed inputs, a finite loss
                      -> [json paths]  refused by the spec checker with a SpecError (counted apart)
    anything else (a raw Keras / JAX / TensorFlow exception, a non-finite loss) propagates: a finding.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

LABELS = ["y1", "y2", "value"]
FEATURES = [
    {"name": "n1", "type": "numeric", "fill": 0, "norm": "standard"},
    {"name": "n2", "type": "numeric", "fill": 0, "norm": "log"},
    {"name": "c1", "type": "categorical"},
    {"name": "c2", "type": "categorical", "max_id": 7},
    {"name": "c3", "type": "categorical", "hash_buckets": 16},
    {"name": "item", "type": "categorical", "embedding": "item"},
    {"name": "hist", "type": "sequence", "max_len": 5, "embedding": "item"},
    {"name": "tags", "type": "tags", "max_len": 3},
]
NUMERIC = ["n1", "n2"]
PLAIN = ["n1", "n2", "c1", "c2", "c3", "item", "tags"]  # FeatureEmbedding / Linear take any of these
# Block types not drawn, and why (a test checks that the registry holds no other).
EXCLUDED = {
    "DomainIds": "needs a feature with declared domain values (MTMD's data)",
    "DomainBatchNorm": "needs DomainIds",
    "MTMDTower": "needs DomainIds and domain-declared features (MTMD's data)",
    "Hint": "loss-only distillation between a teacher and a student (rocket_launching in the mutations)",
    "SoftTarget": "loss-only distillation between a teacher and a student (rocket_launching in the mutations)",
}
ACTIVATIONS = ["relu", "tanh", "gelu", "swish", "leaky_relu", "dice", "sigmoid"]
SMALL = st.integers(1, 6)
UNITS = st.lists(st.integers(1, 8), min_size=1, max_size=3)


class Out:
    """An output a later block may read: its reference, kind ("fields" (B, F, d), "vec" (B, n), or a
    sequence part) and its shape without the batch where known."""

    def __init__(self, ref: str, kind: str, shape: tuple | None):
        self.ref, self.kind, self.shape = ref, kind, shape

    @property
    def width(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)


def _flat(outs) -> int | None:
    widths = [o.width for o in outs]
    return None if None in widths else sum(widths)


# Each recipe: (input choice: which earlier outputs it reads) -> (args strategy, output(s)).
def _mlp(draw, xs):
    units = draw(UNITS)
    args = {"units": units, "activation": draw(st.sampled_from(ACTIVATIONS)),
            "norm": draw(st.sampled_from([None, "batch", "layer"])), "dropout": draw(st.sampled_from([0.0, 0.2]))}
    if draw(st.booleans()):
        args["output_activation"] = None
    return args, ("vec", (units[-1],))


def _cross(draw, xs, v2: bool):
    args = {"layers": draw(st.integers(1, 3))}
    if v2:
        args["low_rank"] = draw(st.sampled_from([None, 1, 2, 4]))
        args["diag_scale"] = draw(st.sampled_from([0.0, 0.5]))
    return args, ("vec", None if _flat(xs) is None else (_flat(xs),))


def _cin(draw, xs):
    sizes = draw(st.lists(st.sampled_from([2, 4, 6]), min_size=1, max_size=2))
    return {"layer_sizes": sizes, "split_half": draw(st.booleans())}, ("vec", None)


def _fm(draw, xs):
    reduce = draw(st.booleans())
    return {"reduce_sum": reduce}, ("vec", (1,) if reduce else (xs[0].shape[1],) if xs[0].shape else None)


def _masknet(draw, xs):
    return ({"mode": draw(st.sampled_from(["serial", "parallel"])), "blocks": draw(st.integers(1, 3)),
             "hidden_units": draw(SMALL), "reduction_ratio": draw(st.sampled_from([0.5, 1.0, 2.0]))}, ("vec", None))


def _maskblock(draw, xs):
    return {"hidden_units": draw(SMALL), "reduction_ratio": draw(st.sampled_from([0.5, 1.0]))}, ("vec", None)


def _wukong_args(draw):
    return {"num_fmb": draw(st.integers(1, 4)), "num_lcb": draw(st.integers(1, 4)), "fmb_rank": draw(st.integers(1, 4)),
            "fmb_units": draw(st.lists(st.integers(2, 8), min_size=1, max_size=2))}


def _wukong(draw, xs, stack: bool):
    args = _wukong_args(draw)
    if stack:
        args = {"layers": draw(st.integers(1, 2)), **args}
    d = xs[0].shape[1] if xs[0].shape else None
    return args, ("fields", None if d is None else (args["num_fmb"] + args["num_lcb"], d))


def _fetower(draw, xs):
    units = draw(UNITS)
    return ({"units": units, "heads": draw(st.integers(1, 2)), "field_dim": draw(st.integers(2, 6)),
             "project": draw(st.sampled_from(["layers", "output"]))}, ("vec", (units[-1],)))


RECIPES = {
    # type: (what it reads, how many, args + output)
    "MLP": ("any", 1, _mlp),
    "CrossNet": ("any", 1, lambda d, xs: _cross(d, xs, False)),
    "CrossNetV2": ("any", 1, lambda d, xs: _cross(d, xs, True)),
    "CIN": ("fields", 1, _cin),
    "FM": ("fields", 1, _fm),
    "LightSE": ("fields", 1, lambda d, xs: ({}, ("fields", xs[0].shape))),
    "MaskNet": ("fields", 1, _masknet),
    "MaskBlock": ("fields", 1, _maskblock),
    "WuKongLayer": ("fields", 1, lambda d, xs: _wukong(d, xs, False)),
    "WuKong": ("fields", 1, lambda d, xs: _wukong(d, xs, True)),
    "FETower": ("fields", 1, _fetower),
    "Concat": ("any", None, lambda d, xs: ({}, ("vec", None if _flat(xs) is None else (_flat(xs),)))),
    "Add": ("same_vec", None, lambda d, xs: ({}, ("vec", xs[0].shape))),
    "DotInteraction": ("dot", None, lambda d, xs: ({"self_interaction": d(st.booleans())}, ("vec", None))),
    "DotScore": ("same_vec", 2, lambda d, xs: ({"learn_scale": d(st.booleans())}, ("vec", (1,)))),
    "FEScore": ("fetowers", 2, lambda d, xs: ({}, ("vec", (1,)))),
    "SequencePooling": ("history", 2, lambda d, xs: ({"mode": d(st.sampled_from(["mean", "sum", "max"]))},
                                                     ("vec", (xs[0].shape[-1],)))),
    "DIN": ("target", 3, lambda d, xs: ({"units": d(UNITS), "activation": d(st.sampled_from(["dice", "relu", "sigmoid"])),
                                         "softmax": d(st.booleans())}, ("vec", None))),
    "DIEN": ("target", 3, lambda d, xs: ({"gru_units": d(st.sampled_from([None, 3])), "attention_units": d(st.just([4])),
                                          "aux_units": d(st.just([4]))}, ("vec", None))),
    "BST": ("target", 3, lambda d, xs: ({"num_heads": d(st.integers(1, 2)), "layers": 1,
                                         "pooling": d(st.sampled_from(["flatten", "target", "mean"]))}, ("vec", None))),
}
MULTITASK = ("MMoE", "PLE", "CGC", "SharedBottom")  # one output per task: last in a graph, each output to a task
FEATURE_BLOCKS = ("FeatureEmbedding", "Linear", "DenseFeatures", "SequenceEmbedding")


def _readable(reads: str, outs: list[Out]) -> bool:
    """Whether some earlier outputs are of the kind a block reads."""
    fields = [o for o in outs if o.kind == "fields" and o.shape is not None]
    widths = [o.width for o in outs if o.kind == "vec" and o.width is not None]
    return {"any": any(o.kind in ("vec", "fields") for o in outs), "fields": bool(fields), "dot": bool(fields),
            "same_vec": len(widths) > len(set(widths)), "fetowers": sum(o.kind == "fetower" for o in outs) >= 2,
            "history": any(o.kind == "history" for o in outs), "target": any(o.kind == "history" for o in outs)}[reads]


def _inputs(draw, reads: str, count, outs: list[Out]) -> list[Out] | None:
    """Earlier outputs a block of this kind can read, or None when there are none."""
    if reads == "any":
        pool = [o for o in outs if o.kind in ("vec", "fields")]
    elif reads in ("fields",):
        pool = [o for o in outs if o.kind == "fields" and o.shape is not None]
    elif reads == "same_vec":
        widths = {}
        for o in outs:
            if o.kind == "vec" and o.width is not None:
                widths.setdefault(o.width, []).append(o)
        groups = [g for g in widths.values() if len(g) >= 2]
        if not groups:
            return None
        group = draw(st.sampled_from(groups))
        n = count or draw(st.integers(2, len(group)))
        return draw(st.permutations(group))[:n]
    elif reads == "dot":  # one fields output, with vectors as wide as its embeddings
        fields = [o for o in outs if o.kind == "fields" and o.shape is not None]
        if not fields:
            return None
        f = draw(st.sampled_from(fields))
        vecs = [o for o in outs if o.kind == "vec" and o.width == f.shape[1]]
        extra = draw(st.lists(st.sampled_from(vecs), max_size=1)) if vecs else []
        return [*extra, f]
    elif reads == "fetowers":
        towers = [o for o in outs if o.kind == "fetower"]
        return draw(st.permutations(towers))[:2] if len(towers) >= 2 else None
    elif reads in ("history", "target"):
        seqs = {o.ref.split(".")[0] for o in outs if o.kind == "history"}
        if not seqs:
            return None
        emb = draw(st.sampled_from(sorted(seqs)))
        part = {o.ref: o for o in outs}
        names = ["history", "mask"] if reads == "history" else ["target", "history", "mask"]
        return [part[f"{emb}.{n}"] for n in names]
    else:
        raise ValueError(reads)
    if not pool:
        return None
    n = count or draw(st.integers(1, min(3, len(pool))))
    return draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n, unique_by=lambda o: o.ref))


@st.composite
def valid_graphs(draw) -> dict:
    """A random spec of blocks wired by the shapes they take, ending in one or two tasks."""
    groups, blocks, outs, consumed = {}, [], [], set()

    def add(kind: str, name: str, inputs: list[str], args: dict | None = None):
        blocks.append({"name": name, "type": kind, "inputs": inputs, **({"args": args} if args else {})})

    n_feature_blocks = draw(st.integers(1, 3))
    for i in range(n_feature_blocks):
        kind = draw(st.sampled_from(FEATURE_BLOCKS))
        g = f"g{i}"
        if kind == "DenseFeatures":
            groups[g] = draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=2, unique=True))
            add(kind, f"dense{i}", [f"group:{g}"])
            outs.append(Out(f"dense{i}", "vec", (len(groups[g]),)))
        elif kind == "SequenceEmbedding":
            context = draw(st.lists(st.sampled_from(["n1", "c1", "c2", "tags"]), max_size=2, unique=True))
            groups[g] = ["item", "hist", *context]
            dim = draw(st.integers(2, 6))
            add(kind, f"seq{i}", [f"group:{g}"], {"dim": dim})
            outs += [Out(f"seq{i}.fields", "fields", None), Out(f"seq{i}.target", "target", (dim,)),
                     Out(f"seq{i}.history", "history", (5, dim)), Out(f"seq{i}.mask", "mask", (5,)),
                     Out(f"seq{i}.context", "context", None)]
            consumed.update({f"seq{i}.target", f"seq{i}.mask", f"seq{i}.context"})  # optional outputs
        else:
            groups[g] = draw(st.lists(st.sampled_from(PLAIN), min_size=1, max_size=5, unique=True))
            if kind == "Linear":
                add(kind, f"linear{i}", [f"group:{g}"], {"l2": draw(st.sampled_from([0.0, 1e-4]))})
                outs.append(Out(f"linear{i}", "vec", (1,)))
            else:
                dim = draw(st.integers(2, 6))
                add(kind, f"emb{i}", [f"group:{g}"], {"dim": dim})
                outs.append(Out(f"emb{i}", "fields", (len(groups[g]), dim)))

    for j in range(draw(st.integers(1, 5))):
        kinds = [k for k in sorted(RECIPES) if _readable(RECIPES[k][0], outs)]
        if not kinds:
            break
        kind = draw(st.sampled_from(kinds))
        reads, count, make = RECIPES[kind]
        xs = _inputs(draw, reads, count, outs)
        args, (out_kind, shape) = make(draw, xs)
        name = f"b{j}"
        add(kind, name, [x.ref for x in xs], args)
        consumed.update(x.ref for x in xs)
        outs.append(Out(name, "fetower" if kind == "FETower" else out_kind, shape))

    # Whatever nothing read yet joins one Concat (it flattens), so that every block reaches a task.
    dangling = [o for o in outs if o.ref not in consumed and o.kind in ("vec", "fields", "fetower", "history")]
    top = dangling[0].ref if len(dangling) == 1 and dangling[0].kind == "vec" else None
    if top is None:
        add("Concat", "top", [o.ref for o in dangling] or [outs[0].ref])
        top = "top"
    tasks = []
    if draw(st.booleans()):  # a multi-task block over the top, each output to its task
        kind = draw(st.sampled_from(MULTITASK))
        names = ["t1", "t2"]
        units = draw(UNITS)
        if kind == "MMoE":
            args = {"tasks": names, "experts": draw(st.integers(1, 3)), "expert_units": units}
        elif kind == "SharedBottom":
            args = {"tasks": names, "units": units}
        else:
            args = {"tasks": names, "shared_experts": draw(st.integers(1, 2)), "task_experts": draw(st.integers(1, 2)),
                    "expert_units": units, **({"levels": draw(st.integers(1, 2))} if kind == "PLE" else {})}
        add(kind, "multi", [top], args)
        for t, label in zip(names, ["y1", "y2"]):
            tasks.append({"name": t, "type": "binary", "input": f"multi.{t}", "label": label})
    else:
        kind = draw(st.sampled_from(["binary", "regression"]))
        tasks.append({"name": "task", "type": kind, "input": top, "label": "y1" if kind == "binary" else "value"})
    return {"name": "fuzzed", "features": {"name": "fuzz", "label": LABELS, "features": FEATURES}, "groups": groups,
            "blocks": blocks, "tasks": tasks,
            "train": {"optimizer": {"type": draw(st.sampled_from(["adam", "sgd", "adagrad"])), "learning_rate": 0.01},
                      "batch_size": 8, "epochs": 1}}


def batch(model, spec, rows: int = 8, seed: int = 0) -> tuple[dict, dict]:
    """A tiny random batch of preprocessed inputs (ids within every table's size, padded histories,
    standardised numbers) and labels, for one train step of a model built without data."""
    from kzoo.features import PAD, feature_descriptions, input_size

    rng = np.random.default_rng(seed)
    sizes = {f["name"]: input_size(f, {f["name"]: {"vocab": ["?"]}}) for f in spec.features}
    sizes.update({d["name"]: d.get("vocab_size") for g in spec.groups for d in feature_descriptions(spec, None, g)})
    x = {}
    for inp in model.inputs:
        name, shape = inp.name, tuple(inp.shape[1:])
        if "float" in str(inp.dtype):
            x[name] = rng.normal(size=(rows, *shape)).astype("float32")
        else:
            ids = rng.integers(0, sizes[name] or 2, size=(rows, *shape))
            if shape[0] > 1:  # a history: the last positions padded in some rows
                ids[rng.random((rows, shape[0])) < 0.3] = PAD
            x[name] = ids.astype("int32")
    y = {}
    for t in spec.tasks:
        y[t["name"]] = (rng.random((rows, 1)) < 0.5).astype("float32") if t.get("type", "binary") == "binary" \
            else rng.normal(size=(rows, 1)).astype("float32")
    return x, y


def check_graph(raw: dict):
    """'stepped' when the spec builds and trains one step to a finite loss; the SpecError's JSON paths
    when the checker refuses it. Anything else propagates (a finding)."""
    import kzoo
    from kzoo.errors import SpecError

    try:
        spec = kzoo.load_spec(raw)
        model = kzoo.build(spec)
    except SpecError as e:
        assert e.problems and all(isinstance(p, str) and p and m for p, m in e.problems), e.problems
        return [p for p, _ in e.problems]
    kzoo.compile(model, spec)
    x, y = batch(model, spec)
    logs = model.train_on_batch(x, y, return_dict=True)
    if not math.isfinite(float(logs["loss"])):
        raise FloatingPointError(f"one step on a random batch gave loss {logs['loss']}")
    return "stepped"
