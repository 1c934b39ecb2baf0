"""Spec -> functional keras.Model: dict inputs by feature name, dict outputs by task name.

Blocks are built in topological order from the registry. Errors raised while building a block
(bad arguments, shape mismatches) are re-raised as SpecError naming that block's JSON path.
"""

from __future__ import annotations

import keras

import blocks  # noqa: F401  (registers every block family)
from blocks.registry import get_block
from kzoo.features import feature_descriptions, model_dtype
from kzoo.spec import Spec, SpecError, load_spec, topological_order


def model_inputs(spec: Spec) -> dict:
    by_name = {f["name"]: f for f in spec.features}
    return {n: keras.Input(shape=(1,), dtype=model_dtype(by_name[n]), name=n) for n in spec.used_features()}


# Blocks whose weights are embedding tables: `train.embedding_l2` is their default `l2`.
EMBEDDING_TABLE_BLOCKS = ("FeatureEmbedding", "Linear")


def build(spec, stats: dict | None = None) -> keras.Model:
    """A plain keras.Model for `spec`; compile and fit it yourself, or use `kzoo.train`.

    `stats` (from `kzoo.features.fit_stats`) sizes the vocabularies; without it the graph is
    built with placeholder sizes, which is enough to check shapes.
    """
    spec = load_spec(spec)
    inputs = model_inputs(spec)
    index = {b["name"]: i for i, b in enumerate(spec.blocks)}
    tensors: dict[str, object] = {}
    for b in topological_order(spec):
        i = index[b["name"]]
        cls = get_block(b["type"])
        args = dict(b.get("args", {}))
        if b["type"] in EMBEDDING_TABLE_BLOCKS and "l2" not in args and spec.train.get("embedding_l2"):
            args["l2"] = spec.train["embedding_l2"]
        refs = b.get("inputs", [])
        try:
            if cls.feature_block:
                group = refs[0][6:]
                layer = cls(features=feature_descriptions(spec, stats, group), name=b["name"], **args)
                x = {n: inputs[n] for n in spec.groups[group]}
            else:
                layer = cls(name=b["name"], **args)
                xs = [tensors[r] for r in refs]
                x = xs[0] if len(xs) == 1 else xs
            tensors[b["name"]] = layer(x)
        except (ValueError, TypeError) as e:
            raise SpecError([(f"blocks[{i}]", f"{b['type']} '{b['name']}': {e}")], spec.source) from None
    outputs = {}
    for t in spec.tasks:
        x = tensors[t["input"]]
        if len(x.shape) > 2:
            x = keras.layers.Flatten(name=f"task_{t['name']}_flatten")(x)
        # A block of width 1 already is the task's logit (wide + deep sums, distilled logits);
        # anything wider gets a Dense(1) head.
        logit = x if x.shape[-1] == 1 else keras.layers.Dense(1, name=f"task_{t['name']}_logit")(x)
        activation = "sigmoid" if t.get("type", "binary") == "binary" else "linear"
        outputs[t["name"]] = keras.layers.Activation(activation, dtype="float32", name=f"task_{t['name']}")(logit)
    try:
        return keras.Model(inputs, outputs, name=spec.name)
    except ValueError as e:
        raise SpecError([("blocks", f"the graph does not form a model: {e}")], spec.source) from None


def check_build(spec: Spec) -> None:
    """Shape-check a spec by building it symbolically (no data, placeholder vocab sizes)."""
    build(spec, stats=None)


def serving_model(spec: Spec, model: keras.Model, tasks: list[str]) -> tuple[keras.Model, list[str]]:
    """The inference graph of `tasks`, reusing the trained layers of `model`.

    Loss-only blocks (distillation) are left out, passing their student input on, and only
    blocks the exported tasks reach are kept: a Rocket Launching light net is exported
    without its booster. Returns the model and the features it reads.
    """
    by_name = {b["name"]: b for b in spec.blocks}
    inputs = model_inputs(spec)
    tensors: dict[str, object] = {}
    read: set[str] = set()

    def tensor(name):
        if name in tensors:
            return tensors[name]
        b = by_name[name]
        cls = get_block(b["type"])
        refs = b.get("inputs", [])
        if cls.loss_only:
            out = tensor(refs[-1])
        elif cls.feature_block:
            group = spec.groups[refs[0][6:]]
            read.update(group)
            out = model.get_layer(name)({n: inputs[n] for n in group})
        else:
            xs = [tensor(r) for r in refs]
            out = model.get_layer(name)(xs[0] if len(xs) == 1 else xs)
        tensors[name] = out
        return out

    outputs = {}
    for t in spec.tasks:
        if t["name"] not in tasks:
            continue
        x = tensor(t["input"])
        if len(x.shape) > 2:
            x = model.get_layer(f"task_{t['name']}_flatten")(x)
        if x.shape[-1] != 1:
            x = model.get_layer(f"task_{t['name']}_logit")(x)
        outputs[t["name"]] = model.get_layer(f"task_{t['name']}")(x)
    used = [n for n in spec.used_features() if n in read]
    return keras.Model({n: inputs[n] for n in used}, outputs, name=f"{spec.name}_serving"), used
