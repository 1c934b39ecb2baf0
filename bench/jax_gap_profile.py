"""Attribution of a profiled train step to the parts of a dcn_v2 model, for bench/jax_gap.py.

    hlo_labels(text)                       ENTRY instruction -> (kind, shape, JAX op_name) of a compiled HLO
    attribute(xplane, steps, labels)       ms per step by part (and per op), and the share of time with k ops
                                           running at once, from a profiler's XSpace file:
                                           JAX's one event per HLO instruction (labels given), or
                                           TensorFlow's one "scope/op:Type" event per kernel (labels None)
"""

from __future__ import annotations

import collections
import re

CATEGORIES = ("emb_gather", "emb_grad", "cross_fwd", "cross_bwd", "mlp_fwd", "mlp_bwd", "head_loss",
              "adam_table", "adam_dense", "adam", "metrics", "other")


def attribute(xplane: str, steps: int, labels: dict | None) -> dict:
    from jax.profiler import ProfileData  # reads any XSpace, TensorFlow's too

    per_op, edges = collections.defaultdict(float), []
    for plane in ProfileData.from_file(xplane).planes:
        for line in plane.lines:
            for ev in line.events:
                if (ev.name in labels) if labels is not None else (
                        ":" in ev.name and "::" not in ev.name and not ev.name.startswith("Eager")):
                    per_op[ev.name] += ev.duration_ns / 1e6 / steps
                    edges += [(ev.start_ns, 1), (ev.start_ns + ev.duration_ns, -1)]
    # Share of the profiled time (first op start to last op end) with k ops running at once.
    in_flight, running = collections.Counter(), 0
    edges.sort()
    for (t, step), (t_next, _) in zip(edges, edges[1:] + edges[-1:]):
        running += step
        in_flight[running] += t_next - t
    span = sum(in_flight.values()) or 1
    ops = sorted(per_op.items(), key=lambda kv: -kv[1])
    part = {op: categorise_jax(op, labels[op]) if labels is not None else categorise_tf(op) for op in per_op}
    out = {"ops_in_flight_share": {k: round(v / span, 3) for k, v in sorted(in_flight.items())},
           "categories": dict.fromkeys(CATEGORIES, 0.0),
           "ops": {op: [round(ms, 3), part[op], " ".join(labels[op][:2]) if labels else ""]
                   for op, ms in ops if ms >= 0.05}}
    for op, ms in ops:
        out["categories"][part[op]] += ms
    out["categories"] = {k: round(v, 2) for k, v in out["categories"].items()}
    if labels is not None:
        out["hlo_ops"] = dict(collections.Counter(kind for kind, _, _ in labels.values()).most_common())
    return out


def hlo_labels(text: str) -> dict:
    """ENTRY instruction -> (op kind, shape, JAX op_name); a fusion without an op_name takes the first
    one inside its fused computation."""
    comps, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) ", line)
        if head and line.rstrip().endswith("{"):
            current = "ENTRY" if line.startswith("ENTRY") else head.group(1)
            comps[current] = []
        elif current:
            comps[current].append(line)
    labels = {}
    for line in comps.get("ENTRY", []):
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([a-z-]+)\(", line)
        if not m or m.group(3) in ("parameter", "constant", "tuple", "get-tuple-element"):
            continue
        name, shape, kind = m.groups()
        call = re.search(r"calls=%(\S+?)[,\s]", line)
        inner = comps.get(call.group(1), []) if call else []
        op = next((o.group(1) for o in (re.search(r'op_name="([^"]*)"', ln) for ln in [line, *inner]) if o), "")
        fusion = re.search(r'"kind":"(__\w+)"', line)
        labels[name] = (kind + ("/" + fusion.group(1) if fusion else ""), shape.split("{")[0], op)
    return labels


SCOPES = (("emb", "emb_gather", "emb_grad"), ("cross", "cross_fwd", "cross_bwd"), ("deep", "mlp_fwd", "mlp_bwd"))
HEAD = ("top", "ctr_logit", "compile_loss", "log_sigmoid", "bce", "binary_crossentropy")


def categorise_jax(name: str, label) -> str:
    _, shape, op = label
    if re.search(r"/adam(_\d+)?/", op):
        return "adam_table" if re.match(r"f32\[\d{4,},16\]", shape) else "adam_dense"
    for scope, fwd, bwd in SCOPES:
        if f"jvp({scope})" in op:
            return bwd if f"transpose(jvp({scope}))" in op else fwd
    if any(k in op for k in HEAD) or name.startswith("dot."):  # the head's dots carry no op_name
        return "head_loss"
    return "metrics" if op else "other"  # what else has a name: metric updates (AUC's scatter-adds, sums)


def categorise_tf(name: str) -> str:
    if re.match(r"adam(_\d+)?/", name):
        return "adam"  # the table's and the dense weights' updates together (the pieces time them apart)
    if "UnsortedSegmentSum" in name or "Unique" in name:
        return "emb_grad"  # kzoo.blocks.backend.tensorflow.gather_rows' gradient
    for scope, fwd, bwd in SCOPES:
        if f"/{scope}" in name:
            return bwd if "gradient_tape/" in name else fwd
    if any(k in name for k in HEAD):
        return "head_loss"
    return "metrics" if any(k in name.lower() for k in ("auc", "mean", "metrics")) else "other"
