"""SequenceEmbedding: a feature group with a behaviour history, embedded for DIN, DIEN and BST.

The target item and the history share one table (a `sequence` feature and a `categorical` one
declaring the same `embedding`), so the history's items and the candidate are the same vectors,
and side sequences (each history item's category) line up with the target's side features.
"""

from __future__ import annotations

from keras import ops

from kzoo.blocks.core import LIST_KINDS, FeatureEmbedding, field_runs
from kzoo.blocks.registry import register_block

OUTPUTS = ["fields", "target", "history", "mask", "context"]


@register_block()
class SequenceEmbedding(FeatureEmbedding):
    """Embeds a group holding a behaviour history: five outputs for the sequence blocks.

    The group's `sequence` features are one history (aligned item by item; the data checks it):
    a sequence whose table (`embedding` name) is also a `categorical` feature's of the group is
    paired with that feature, its *target*; the others (a time-gap sequence) are context.
    `tags` features, numerics and categoricals are fields, as in FeatureEmbedding.

    Outputs (a spec names them "NAME.fields", "NAME.target", ...):
        fields: (batch, F, dim): every categorical, numeric and tags feature (targets included),
            as FeatureEmbedding gives them.
        target: (batch, S * dim): the paired categoricals' rows, in the order of their sequences.
        history: (batch, max_len, S * dim): the paired sequences' item rows side by side; padded
            positions are zeros.
        mask: (batch, max_len): 1.0 at a history item, 0.0 at padding (all zeros: empty history).
        context: (batch, max_len, C * dim): the unpaired sequences' rows (zeros of width dim when
            there are none).

    Args:
        dim: int. Embedding size.
        features: list of dict. Filled in by the graph builder from the feature group.
        l2: float. L2 penalty on the rows looked up in each batch. Defaults to `0.0`.
        initializer_scale: float. Std of the normal initialiser. Defaults to `0.05`.

    Example (a spec):
    ```json
    {"name": "emb", "type": "SequenceEmbedding", "inputs": ["group:all"], "args": {"dim": 16}},
    {"name": "din", "type": "DIN", "inputs": ["emb.target", "emb.history", "emb.mask"]}
    ```
    """

    def __init__(self, dim: int, features: list | None = None, l2: float = 0.0,
                 initializer_scale: float = 0.05, **kwargs):
        super().__init__(dim=dim, features=features, l2=l2, initializer_scale=initializer_scale, **kwargs)
        self.paired, self.context = [], []
        if features is None:
            return
        targets = {}
        for f in self.features:
            if f["kind"] == "categorical":
                targets.setdefault(f.get("table") or f["name"], f)
        for f in self.features:
            if f["kind"] == "sequence":
                target = targets.get(f.get("table") or f["name"])
                (self.paired if target is not None else self.context).append((f, target))
        if not self.paired:
            raise ValueError("the group needs a `sequence` feature sharing its `embedding` table with a categorical "
                             "feature of the group (the history and its target item); "
                             f"sequences: {[f['name'] for f in self.features if f['kind'] == 'sequence'] or 'none'}")
        lengths = {f["name"]: f["max_len"] for f, _ in self.paired + self.context}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the sequences of one history need one max_len, received {lengths}")
        self.max_len = next(iter(lengths.values()))
        self.field_features = [f for f in self.features if f["kind"] != "sequence"]
        if not self.field_features:
            raise ValueError("the group has no categorical, numeric or tags feature besides its sequences")
        # The fields are FeatureEmbedding's output over the non-sequence features: reuse its runs.
        self.runs = field_runs(self.field_features)
        self.lists = [f for f in self.field_features if f["kind"] in LIST_KINDS]

    @classmethod
    def output_names(cls, args: dict) -> list[str]:
        return list(OUTPUTS)

    def call(self, inputs):
        fields = self._fields(inputs)
        targets, histories = [], []
        mask = None
        for f, target in self.paired:
            items, item_mask = self.items(inputs, f)
            histories.append(items)
            mask = item_mask if mask is None else mask
            targets.append(fields[:, self._field_index(target), :])
        context = [self.items(inputs, f)[0] for f, _ in self.context]
        if not context:
            context = [ops.zeros_like(histories[0][..., : self.dim])]
        join = lambda xs: xs[0] if len(xs) == 1 else ops.concatenate(xs, axis=-1)  # noqa: E731
        return {"fields": fields, "target": join(targets), "history": join(histories), "mask": mask,
                "context": join(context)}

    def _field_index(self, feature: dict) -> int:
        return [f["name"] for f in self.field_features].index(feature["name"])

    def compute_output_shape(self, input_shape):
        s, c = len(self.paired), max(len(self.context), 1)
        return {"fields": (None, len(self.field_features), self.dim), "target": (None, s * self.dim),
                "history": (None, self.max_len, s * self.dim), "mask": (None, self.max_len),
                "context": (None, self.max_len, c * self.dim)}

