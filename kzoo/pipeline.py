"""Raw data -> the (features, labels) tf.data batches a `kzoo.build` model takes.

    prepare(spec, data)   -> Prepared: the split frames, the training split's statistics, the
                             preprocessing stage and `.train` / `.validation` / `.test` datasets
    load_for(spec, data)  -> (spec, frame) conformed to the spec's dataset schema
    split_frames(spec, frame), make_dataset(frame, spec, pre, batch_size)

The model built by `kzoo.build(spec, stats)` takes *preprocessed* inputs (ids, normalised
floats); this is the stage that makes them, in tf.data, on every backend. The same stage is
composed into the SavedModel at export.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from kzoo import data as kdata
from kzoo.features import Preprocessor, batches, check_declared, fit_stats, raw_arrays
from kzoo.errors import SpecError
from kzoo.spec import Spec, load_spec
from kzoo.tasks import tasks_of

DEFAULT_BATCH = 512


def load_for(spec: Spec, data, require_label: bool = True) -> tuple[Spec, object]:
    """Load `data`; when it names a bundled dataset (criteo, avazu, synthetic), the spec's graph is
    used on that dataset's schema. Returns (spec, DataFrame conformed to the spec's dataset).

    require_label: bool. With False, data without the label column(s) reads too (to predict on).
    """
    frame, dataset_name = kdata.load(data, negatives=int(spec.train.get("negatives", 1)),
                                     seed=int(spec.train.get("split", {}).get("seed", 0)))
    spec = on_dataset(spec, dataset_name)
    return spec, conform_for(spec, frame, require_label)


def conform_for(spec: Spec, frame, require_label: bool = True):
    """`frame` conformed to the spec's dataset, with the columns its tasks read (sample weights,
    masks) and missing labels kept where a task masks them."""
    tasks = tasks_of(spec)
    frame = kdata.conform(frame, spec.dataset, require_label=require_label,
                          weights=tuple(c for t in tasks for c in t.columns()),
                          labels_may_miss=tuple(t.label for t in tasks if t.config.get("missing_label") == "mask"))
    for t in tasks:
        t.check_labels(frame)
    return frame


def on_dataset(spec: Spec, dataset_name: str | None) -> Spec:
    """The spec on the bundled schema of `dataset_name` (a named loader's data), else unchanged."""
    if dataset_name and spec.dataset.get("name") != dataset_name:
        print(f"kzoo: data is {dataset_name}; using its bundled feature schema", file=sys.stderr)
        try:
            spec = spec.with_dataset(kdata.bundled_dataset(dataset_name))
        except SpecError as e:
            own = spec.dataset.get("name", "?")
            how = f"--data {own}:PATH" if own in kdata.LOADERS else f"a file with the '{own}' dataset's columns"
            raise SpecError([("features", f"this spec is written for the '{own}' dataset, and the {dataset_name} "
                                          f"data does not have its features ({e.problems[0][1]}); pass {how}")],
                            spec.source) from None
    return spec


def split_frames(spec: Spec, frame):
    """(train, validation, test): by the dataset's `split_column` when the data has it (a loader's
    time-ordered split), else by the spec's `train.split` (seeded; 80/10/10 by default)."""
    column = spec.dataset.get("split_column")
    if column and column in frame.columns:
        return kdata.split_by_column(frame, column)
    split = spec.train.get("split", {})
    return kdata.split(frame, seed=split.get("seed", 0), validation=split.get("validation", 0.1),
                       test=split.get("test", 0.1))


def labels_of(frame, spec: Spec, tasks=None) -> tuple[dict, dict | None]:
    """({task: (n, 1) float32 labels}, {task: (n,) row weights} or None when no task weighs rows).
    `tasks`: the fitted Task objects (kzoo.tasks.tasks_of(spec) when None)."""
    tasks = tasks if tasks is not None else tasks_of(spec)
    labels = {t.name: t.labels(frame) for t in tasks}
    if not any(t.weighted for t in tasks):
        return labels, None
    seed = int(spec.train.get("seed", 0))
    return labels, {t.name: t.sample_weights(frame, seed) for t in tasks}


def make_dataset(frame, spec: Spec, pre: Preprocessor, batch_size: int, with_labels: bool = True, tasks=None,
                 training: bool = False):
    """Batches of model inputs (and {task: label}, plus {task: weight} when a task weighs rows, with
    `with_labels`: then only the rows the tasks train on, e.g. a retrieval task's positives);
    preprocessing runs in tf.data, then is cached. `tasks`: the fitted Task objects; `training`:
    the batches are the training split's (a task may add to them after the cache, e.g. uniformly
    sampled negatives drawn afresh each epoch)."""
    import numpy as np
    import tensorflow as tf

    tasks = tasks if tasks is not None else tasks_of(spec)
    if with_labels:
        keep = [k for k in (t.keep_rows(frame) for t in tasks) if k is not None]
        if keep:
            frame = frame[np.logical_and.reduce(keep)]
    x = raw_arrays(frame, pre.raw)
    if with_labels:
        labels, weights = labels_of(frame, spec, tasks)
        if weights is None:
            ds = batches((x, labels), batch_size).map(lambda a, b: (pre(a), b), num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = batches((x, labels, weights), batch_size).map(lambda a, b, w: (pre(a), b, w),
                                                               num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = batches(x, batch_size).map(pre, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.cache()
    if with_labels and training:
        for t in tasks:
            ds = t.augment(ds, spec, pre)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclass
class Prepared:
    """A spec's data, split and preprocessed with the training split's statistics.

    Attributes:
        spec: the Spec (on the data's bundled schema when `data` named one).
        stats: vocabularies and normalisation statistics; pass to `kzoo.build(spec, stats)`.
        preprocessor: raw columns -> model inputs (kzoo.features.Preprocessor).
        frames: {"train", "validation", "test"} conformed raw DataFrames.
        batch_size: batch size of `train` / `validation` / `test`.
        tasks: the spec's Task objects, fitted on the frames (a retrieval task's item corpus).
    """

    spec: Spec
    stats: dict
    preprocessor: Preprocessor
    frames: dict
    batch_size: int = DEFAULT_BATCH
    tasks: list = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    def dataset(self, part: str, batch_size: int | None = None, labels: bool = True):
        """tf.data batches of split `part` ("train", "validation" or "test"): (features, {task: label})
        with `labels`, features only without."""
        if part not in self.frames:
            raise ValueError(f"part must be one of {sorted(self.frames)}, received {part!r}")
        key = (part, batch_size or self.batch_size, labels)
        if key not in self._cache:
            self._cache[key] = make_dataset(self.frames[part], self.spec, self.preprocessor, key[1], labels,
                                            self.tasks or None, training=part == "train")
        return self._cache[key]

    @property
    def train(self):
        return self.dataset("train")

    def train_epoch(self, epoch: int):
        """The training batches of epoch `epoch` (0-based): the same batches in the same order for the
        same epoch in any process, so a resumed run can skip the ones it already did. In memory the
        data keeps its order every epoch."""
        return self.train

    @property
    def rows(self) -> dict:
        """{"train", "validation", "test"}: rows in each split."""
        return {part: len(frame) for part, frame in self.frames.items()}

    @property
    def validation(self):
        return self.dataset("validation")

    @property
    def test(self):
        return self.dataset("test")


def prepare(spec, data="synthetic", batch_size: int | None = None) -> Prepared:
    """Turn raw data into what a `kzoo.build` model trains on.

    Args:
        spec: a Spec, a spec path, a JSON string or a dict.
        data: "synthetic[:ROWS]", "criteo:PATH", "avazu:PATH", a CSV/TSV/Parquet path, or a DataFrame
            with the spec's columns. Defaults to `"synthetic"`. A folder or glob of shards (or a file with
            `train.streaming`) streams: a kzoo.streaming.Streamed comes back instead.
        batch_size: int. Defaults to the spec's `train.batch_size`, else 512.

    Example:
    ```python
    data = kzoo.prepare("zoo_configs/dcn_v2.json", "synthetic:5000")
    model = kzoo.build(data.spec, data.stats)
    kzoo.compile(model, data.spec)
    model.fit(data.train, validation_data=data.validation, epochs=1)
    ```
    """
    spec = load_spec(spec)
    from kzoo.streaming import prepare_stream, wants_stream  # a folder/glob of shards: read chunk by chunk

    if wants_stream(spec, data):
        return prepare_stream(spec, data, int(batch_size or spec.train.get("batch_size", DEFAULT_BATCH)))
    spec, frame = load_for(spec, data)
    check_declared(spec.features, frame)
    train, validation, test = split_frames(spec, frame)
    stats = fit_stats(spec.features, train)
    pre = Preprocessor(spec.features, stats, spec.used_features())
    frames = {"train": train, "validation": validation, "test": test}
    batch_size = int(batch_size or spec.train.get("batch_size", DEFAULT_BATCH))
    tasks = tasks_of(spec)
    for t in tasks:
        t.fit(spec, frames, batch_size)
    return Prepared(spec=spec, stats=stats, preprocessor=pre, frames=frames, batch_size=batch_size, tasks=tasks)
