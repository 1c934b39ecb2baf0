"""The spec side of row-sparse embedding updates: which `train.embedding_optimizer` types update only
the rows a batch touches, the keys each type takes, and the problems of a spec's setting.

    ROW_SPARSE                    {type: keys it takes besides `type` and `learning_rate`}
    embedding_optimizer_problems(train)   [(json path, message)] for `kzoo.spec.check`

No Keras import here: `kzoo validate` checks a spec without building anything.
"""

from __future__ import annotations

# Keras' names for the hyper-parameters (the spec is the optimizer's config).
ROW_SPARSE: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "adagrad": ("initial_accumulator_value", "epsilon"),
    "lazy_adam": ("beta_1", "beta_2", "epsilon"),
    "ftrl": ("initial_accumulator_value", "learning_rate_power", "l1_regularization_strength",
             "l2_regularization_strength"),
}

# Keys of the dense Keras optimizers (train.optimizer's keys); `embedding_optimizer` "adam", "adamw" and
# "rmsprop" stay Keras' dense optimizers.
DENSE_KEYS = ("weight_decay", "momentum", "clipnorm")

_WHY = {
    "weight_decay": "decay moves every row at every step; use train.embedding_l2 (L2 on the rows a batch "
                    "looks up) instead",
    "momentum": "momentum keeps moving rows the batch did not touch; use 'lazy_adam' for a row-sparse "
                "optimizer with moments",
    "clipnorm": "remove it, or use a dense embedding optimizer ('adam', 'rmsprop')",
}


def embedding_optimizer_problems(train: dict) -> list[tuple[str, str]]:
    """Problems of `train.embedding_optimizer` once the JSON Schema has passed: keys that do not apply
    to the chosen type, and row-sparse rules combined with a loss balancing they cannot follow."""
    cfg = train.get("embedding_optimizer")
    if not cfg:
        return []
    kind, where, out = cfg["type"], "train.embedding_optimizer", []
    takes = ROW_SPARSE.get(kind, DENSE_KEYS)
    every = set(DENSE_KEYS).union(*ROW_SPARSE.values())
    for key in [k for k in cfg if k in every and k not in takes]:
        if kind in ROW_SPARSE and key in _WHY:
            out.append((f"{where}.{key}", f"'{key}' does not apply to the row-sparse '{kind}': {_WHY[key]}"))
        else:
            users = sorted(t for t, keys in {**ROW_SPARSE, **{d: DENSE_KEYS for d in ("adam", "adamw", "rmsprop")}}
                           .items() if key in keys)
            out.append((f"{where}.{key}", f"'{key}' does not apply to '{kind}'; it is a key of {users}"))
    balancing = train.get("balancing", {"type": "static"}).get("type", "static")
    if kind in ("lazy_adam", "ftrl") and balancing != "static":
        out.append(("train.balancing.type",
                    f"'{balancing}' balancing computes dense per-task gradients, which cannot tell the rows a batch "
                    f"touched, so it cannot drive the row-sparse '{kind}' embedding optimizer; use "
                    "embedding_optimizer 'adagrad' or 'sgd' (exact with dense gradients) or static balancing"))
    return out
