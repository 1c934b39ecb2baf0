"""The graph: block wiring algorithms, and the one walk that turns a Spec into Keras models.

    edges(blocks) / find_cycle / reachable / topological_order   plain graph algorithms (the
        spec checker uses them before anything is built)
    build(spec, stats)            the training model: dict inputs by feature, dict of task logits
    serving_model(spec, model)    the same walk over the trained layers, without loss-only
        blocks and without what the exported tasks do not reach, ending in each task's served
        output (a probability, a value)

Both models come from `walk`: it visits the blocks in topological order and asks a `layer`
function for each layer by name — a new layer while building, the trained one of `model`
when re-walking it — so the serving graph cannot drift from the trained one.
"""

from __future__ import annotations

import os

from typing import NamedTuple

import keras

from kzoo import blocks  # noqa: F401  (registers every block family)
from kzoo.blocks.registry import get_block
from kzoo.errors import SpecError
from kzoo.features import feature_descriptions, model_dtype, model_shape
from kzoo.tasks import tasks_of

GROUP = "group:"


# ---------------------------------------------------------------------------------- algorithms

def ref_block(ref: str) -> str:
    """The block a reference names: "mmoe.ctr" -> "mmoe" (block names have no dots)."""
    return ref.split(".", 1)[0]


def ref_output(ref: str) -> str | None:
    """The output a reference names: "mmoe.ctr" -> "ctr"; None for a single-output block's "emb"."""
    return ref.split(".", 1)[1] if "." in ref else None


def edges(blocks: list[dict]) -> dict[str, list[str]]:
    """Block name -> the blocks it reads (feature groups left out; "mmoe.ctr" counts as "mmoe")."""
    return {b["name"]: [ref_block(x) for x in b.get("inputs", []) if not x.startswith(GROUP)] for b in blocks}


def reachable(roots: list[str], graph: dict[str, list[str]]) -> set[str]:
    """Names reachable from `roots` along `graph`'s edges, the roots included."""
    seen, stack = set(), list(roots)
    while stack:
        n = stack.pop()
        if n in seen or n not in graph:
            continue
        seen.add(n)
        stack.extend(graph[n])
    return seen


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m in graph and not state.get(m):
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        path.pop()
        return None

    for n in graph:
        if not state.get(n):
            found = visit(n)
            if found:
                return found
    return None


def topological_order(blocks: list[dict]) -> list[dict]:
    """Blocks in dependency order (inputs first), stable w.r.t. the given order. Assumes no cycle."""
    done, order = set(), []
    by_name = {b["name"]: b for b in blocks}
    graph = edges(blocks)

    def visit(name):
        if name in done:
            return
        for ref in graph[name]:
            visit(ref)
        done.add(name)
        order.append(by_name[name])

    for b in blocks:
        visit(b["name"])
    return order


# ---------------------------------------------------------------------------------- the walk

def model_inputs(spec) -> dict:
    by_name = {f["name"]: f for f in spec.features}
    return {n: keras.Input(shape=model_shape(by_name[n]), dtype=model_dtype(by_name[n]), name=n)
            for n in spec.used_features()}


def _check_table_memory(b: dict, i: int, features: list[dict], source) -> None:
    """A block's embedding tables must fit in this machine's memory (rows x dim x 4 bytes): a huge
    `hash_buckets` or `dim` is a SpecError before Keras tries to allocate it."""
    rows = sum(int(f.get("vocab_size", 0)) for f in features if f["kind"] != "numeric")
    dim = b.get("args", {}).get("dim", 1)
    need = rows * (dim if isinstance(dim, int) and dim > 0 else 1) * 4
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise SpecError([(f"blocks[{i}].args", f"{b['type']} '{b['name']}': its tables would hold {rows:,} rows x "
                                               f"{dim} = {need / 2**30:,.1f} GiB, more than this machine's "
                                               f"{have / 2**30:,.1f} GiB; lower `dim` or the features' hash_buckets / "
                                               "max_id")], source)


def _block_error(b: dict, i: int, e: Exception) -> tuple[str, str]:
    """A block's constructor error at its JSON path; a misspelt activation at the argument itself."""
    args = b.get("args", {})
    bad = [k for k, v in args.items() if "activation" in k and isinstance(v, str) and v and v in str(e)]
    if bad and "activation" in str(e):
        from kzoo.spec_schema import did_you_mean

        names = [n for n in dir(keras.activations) if not n.startswith("_") and n not in ("get", "serialize", "deserialize")]
        return (f"blocks[{i}].args.{bad[0]}", f"{b['type']} '{b['name']}': unknown activation {args[bad[0]]!r}"
                f"{did_you_mean(args[bad[0]], names)}; Keras' activations: {', '.join(names)}")
    return (f"blocks[{i}]", f"{b['type']} '{b['name']}': {e}")


def _block_args(spec, b: dict, cls) -> dict:
    args = dict(b.get("args", {}))
    # `train.embedding_l2` is the default `l2` of every block that holds embedding tables.
    if cls.holds_tables and "l2" not in args and spec.train.get("embedding_l2"):
        args["l2"] = spec.train["embedding_l2"]
    return args


class Walk(NamedTuple):
    """What `walk` returns: the model inputs by feature, the training outputs by task, the served
    outputs by output name, the features read, and each task's head output (a retrieval task's
    (query, item) embeddings)."""

    inputs: dict
    outputs: dict
    served: dict
    used: list
    heads: dict


def walk(spec, stats: dict | None = None, model: keras.Model | None = None, tasks: list[str] | None = None):
    """One pass over the spec's graph, as a `Walk`; a training walk leaves the served outputs empty, a serving walk the training ones.

    With `model` None, new layers are made (sized by `stats`); otherwise `model`'s trained layers
    are reused, loss-only blocks are skipped (their student input is passed on) and only the
    blocks `tasks` reach are visited.
    """
    serving = model is not None
    all_tasks = tasks_of(spec)  # parents before the tasks `given` them
    needed = set(tasks) if tasks is not None else {t.name for t in all_tasks}
    for t in reversed(all_tasks):  # a served conditional task needs its parent's logit
        if t.name in needed and t.parent is not None:
            needed.add(t.parent.name)
    wanted = [t for t in all_tasks if t.name in needed]
    by_name = {b["name"]: b for b in spec.blocks}
    index = {b["name"]: i for i, b in enumerate(spec.blocks)}
    graph = edges(spec.blocks)
    if serving:  # a loss-only block reads only its last (student) input once exported
        graph = {n: (refs[-1:] if get_block(by_name[n]["type"]).loss_only else refs) for n, refs in graph.items()}
    visit = reachable([ref_block(r) for t in wanted for r in t.inputs], graph)

    def layer(name, make):
        return model.get_layer(name) if serving else make()

    inputs = model_inputs(spec)
    tensors: dict[str, object] = {}  # block -> its output, or {output name: tensor} for several
    read: set[str] = set()

    def tensor(ref):
        out = tensors[ref_block(ref)]
        return out[ref_output(ref)] if ref_output(ref) is not None else out

    for b in topological_order(spec.blocks):
        name = b["name"]
        if name not in visit:
            continue
        cls = get_block(b["type"])
        refs = b.get("inputs", [])
        if serving and cls.loss_only:
            tensors[name] = tensor(refs[-1])
            continue
        try:
            if cls.feature_block:
                group = refs[0][len(GROUP):]
                read.update(spec.groups[group])
                x = {n: inputs[n] for n in spec.groups[group]}
                features = feature_descriptions(spec, stats, group)
                if cls.holds_tables and not serving:
                    _check_table_memory(b, index[name], features, spec.source)
                make = lambda: cls(features=features, name=name, **_block_args(spec, b, cls))  # noqa: E731
            else:
                xs = [tensor(r) for r in refs]
                x = xs[0] if len(xs) == 1 else xs
                make = lambda: cls(name=name, **_block_args(spec, b, cls))  # noqa: E731
            tensors[name] = layer(name, make)(x)
        except SpecError:
            raise
        except (ValueError, TypeError) as e:
            raise SpecError([_block_error(b, index[name], e)], spec.source) from None
    logits = {t.name: t.head(*[tensor(r) for r in t.inputs], layer=layer) for t in wanted}
    outputs: dict = {}
    served: dict = {}
    for t in wanted:
        if serving:
            served.update(t.serve(logits[t.name], served))
        else:
            outputs[t.name] = t.train_output(logits[t.name], logits, outputs)
    if tasks is not None:  # only the asked tasks' outputs (a parent walked for its logit is not served)
        served = {k: v for t in wanted if t.name in tasks for k, v in served.items() if k in t.output_names()}
    used = [n for n in spec.used_features() if n in read]
    return Walk({n: inputs[n] for n in used}, outputs, served, used, logits)


def build(spec, stats: dict | None = None) -> keras.Model:
    """The training model of a checked Spec: preprocessed inputs by feature, task logits out.

    `stats` (kzoo.features.fit_stats) sizes the vocabularies; without it the graph is built with
    placeholder sizes, which is enough to check shapes.
    """
    inputs, outputs, _, _, _ = walk(spec, stats)
    try:
        return keras.Model(inputs, outputs, name=spec.name)
    except ValueError as e:
        raise SpecError([("blocks", f"the graph does not form a model: {e}")], spec.source) from None


def check_build(spec) -> None:
    """Shape-check a spec by building it symbolically (no data, placeholder vocab sizes)."""
    build(spec, stats=None)


def serving_model(spec, model: keras.Model, tasks: list[str] | None = None) -> tuple[keras.Model, list[str]]:
    """The inference graph of `tasks` (default: the spec's `export.tasks`, else all) over the
    trained layers of `model`: served outputs (probabilities, values) by output name (a task's name;
    a conditional task adds its conditional probability). Returns the model and the features it reads."""
    tasks = tasks or export_tasks(spec)
    inputs, _, served, used, _ = walk(spec, model=model, tasks=tasks)
    return keras.Model(inputs, served, name=f"{spec.name}_serving"), used


def features_reached(spec, ref: str) -> list[str]:
    """The features block `ref` reads, directly or through the blocks under it, in schema order."""
    by_name = {b["name"]: b for b in spec.blocks}
    groups = {x[len(GROUP):] for n in reachable([ref_block(ref)], edges(spec.blocks))
              for x in by_name[n].get("inputs", []) if x.startswith(GROUP)}
    read = {f for g in groups for f in spec.groups.get(g, [])}
    return [n for n in spec.used_features() if n in read]


def export_tasks(spec) -> list[str]:
    """The spec's `export.tasks`, else every task that serves an output (not a training-only one)."""
    served = {t.name: t.served for t in tasks_of(spec)}
    return spec.raw.get("export", {}).get("tasks") or [t["name"] for t in spec.tasks if served[t["name"]]]
