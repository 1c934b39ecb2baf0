"""Training on data larger than memory: shards read chunk by chunk, never all at once.

    wants_stream(spec, data)          True for a folder or glob of shards, or a file with `train.streaming`
    prepare_stream(spec, data, bs)    -> Streamed: one pass over the shards learns the statistics, counts
                                      the rows of each split and keeps bounded validation / test samples
    Streamed.train_epoch(epoch)       the epoch's training batches (tf.data): shards in a seeded order,
                                      rows through a shuffle buffer, the same batches for the same
                                      (seed, epoch) in any process, so a resumed run skips what it did;
                                      one dataset for all epochs, set to `epoch` for the next iteration

Memory holds one chunk being read, the shuffle buffer, the vocabularies and the evaluation samples,
whatever the number of rows. The spec's `train.streaming` ({} for the defaults):

    shuffle_buffer   rows mixed across chunks and shards before batching. Defaults to 100_000.
    chunk_rows       rows per Parquet read (CSV is read by 8 MiB blocks). Defaults to 65_536.
    eval_rows        rows of the validation and of the test split kept to evaluate on (a sample chosen
                     by a hash of each row, not the first ones read). Defaults to 50_000.
    stats_sample     learn the statistics from about this many training rows (the first training rows
                     of every file, in equal shares) instead of all: this bounds the memory of counting
                     the values of a column with very many (user ids); the pass still reads, checks and
                     counts every row, so bad data is found before training starts.

The split is `train.split` (kzoo.stream_read.Splitter): by a hash of each row's place (default), of a
key column (`"by": "hash", "key": "user_id"`), or by file. Each row is read and conformed by
kzoo.data.conform, so bad data is a DataError naming the file, the column and the row.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kzoo import data as kdata
from kzoo.errors import DataError, SpecError
from kzoo.features import Preprocessor, batches, check_declared, raw_dtype
from kzoo.spec import Spec
from kzoo.stream_read import PARTS, Shards, Splitter, _suffix, priority
from kzoo.stream_stats import Reservoir, StreamStats
from kzoo.tasks import Task, tasks_of

DEFAULTS = {"shuffle_buffer": 100_000, "chunk_rows": 65_536, "eval_rows": 50_000, "stats_sample": None}


def wants_stream(spec: Spec, data) -> bool:
    """Whether `data` streams: a folder or a glob of shards always does; one table file does when the
    spec has `train.streaming`. A split only streaming has (by hash or by file) on in-memory data, or
    `train.streaming` on data that is not a file, is an error rather than silently ignored."""
    stream = "streaming" in spec.train
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if kdata.shard_paths(text) is not None:
            return True
        if stream and _suffix(Path(text)) in kdata.TABLE_SUFFIXES:
            return True
    if stream:
        shown = "a DataFrame" if isinstance(data, pd.DataFrame) else repr(os.fspath(data) if isinstance(
            data, os.PathLike) else data)
        raise DataError(f"train.streaming reads table files, and the data is {shown}; pass a .csv/.tsv/.parquet "
                        "file, a folder of them or a glob (shards/*.parquet), or drop train.streaming")
    by = spec.train.get("split", {}).get("by", "random")
    if by != "random":
        raise SpecError([("train.split.by", f"a split by {by} applies to streamed data (a folder or glob of shards, "
                                            "or a file with train.streaming); data in memory is split at random")],
                        spec.source)
    return False


def _paths(data) -> list:
    text = os.fspath(data)
    shards = kdata.shard_paths(text)
    return shards if shards is not None else [kdata._resolve(text)]


def _check_tasks(tasks: list) -> None:
    """Tasks that need all their rows in memory (a retrieval task's item corpus) cannot stream."""
    for i, t in enumerate(tasks):
        kind = type(t)
        if kind.fit is not Task.fit or kind.augment is not Task.augment or kind.keep_rows is not Task.keep_rows:
            raise SpecError([(f"tasks[{i}].type", f"a {t.kind} task keeps its item corpus in memory and does not "
                                                  "stream; train it on one file without train.streaming")])


@dataclass
class Streamed:
    """A spec's streamed data: what kzoo.pipeline.Prepared offers, without holding the training rows.

    Attributes:
        spec, stats, preprocessor, batch_size, tasks: as in Prepared.
        frames: {"validation", "test"}: bounded samples (at most `eval_rows` rows each) the run
            evaluates on; the training rows are never in memory.
        rows: {"train", "validation", "test"}: rows of each split in the whole data.
        info: what was streamed and evaluated (files, split, statistics, evaluation samples), for run.json.
    """

    spec: Spec
    stats: dict
    preprocessor: Preprocessor
    frames: dict
    batch_size: int
    tasks: list
    rows: dict
    info: dict
    shards: Shards = field(repr=False, default=None)
    splitter: Splitter = field(repr=False, default=None)
    options: dict = field(repr=False, default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ reading
    def columns(self) -> list[str]:
        """Raw columns read from each file: the dataset's, the tasks' and the split key."""
        dataset = self.spec.dataset
        labels = dataset.get("label") or []
        labels = [labels] if isinstance(labels, str) else list(labels)
        names = [f["name"] for f in dataset.get("features", []) if f.get("type") != "cross"]
        crossed = [c for f in dataset.get("features", []) if f.get("type") == "cross" for c in f.get("columns", [])]
        extra = [c for t in self.tasks for c in t.columns()] + [dataset.get("split_column") or ""]
        return [c for c in dict.fromkeys([*labels, *names, *crossed, *extra, *self.splitter.columns]) if c]

    def chunks(self, i: int):
        """(conformed chunk, uint64 hash, int8 part) of file i, chunk by chunk."""
        text = [f["name"] for f in self.spec.dataset.get("features", []) if f.get("type") == "categorical"
                and "max_id" not in f] + self.splitter.columns
        for row0, raw in self.shards.chunks(i, self.columns(), self.options["chunk_rows"], text):
            h = self.splitter.hashes(raw, self.shards, i, row0)
            try:
                frame = conform_chunk(self.spec, self.tasks, raw)
            except DataError as e:
                raise self.shards.located(e, i, row0) from None
            yield frame, h, self._parts(frame, h, i, row0)

    def _parts(self, frame, h, i: int, row0: int) -> np.ndarray:
        column = self.spec.dataset.get("split_column")
        if not (column and column in frame.columns):
            return self.splitter.parts(h, i)
        values = frame[column].to_numpy(dtype=object)
        parts = np.full(len(values), -1, dtype=np.int8)
        for p, name in enumerate(PARTS):
            parts[values == name] = p
        bad = np.flatnonzero(parts < 0)
        if len(bad):
            raise self.shards.located(DataError(f"column {column!r}, row {bad[0] + 1}: {values[bad[0]]!r} is not "
                                                f"one of {', '.join(PARTS)}"), i, row0)
        return parts

    def train_files(self) -> list[int]:
        return [i for i in range(len(self.shards)) if self.splitter.file_part[i] == 0]

    # ------------------------------------------------------------------ batches
    def arrays(self, frame: pd.DataFrame, seed: int) -> dict:
        """{("x", feature): raw column, ("y", task): (n, 1) labels, ("w", task): (n,) weights} of a
        conformed frame, with the dtypes the preprocessing takes (no per-row conversion: conform
        already made text str and numbers float32). `seed` draws a task's negative downsampling."""
        out = {}
        for f in self.preprocessor.raw:
            dtype, column = raw_dtype(f), frame[f["name"]]
            if dtype == "string":
                out[("x", f["name"])] = column.to_numpy(dtype=object)
            elif dtype == "float32":
                out[("x", f["name"])] = column.to_numpy(dtype=np.float32)
            else:
                from kzoo.columns import raw_column

                out[("x", f["name"])] = raw_column(column, dtype, f["name"])
        for t in self.tasks:
            out[("y", t.name)] = t.labels(frame)
        if any(t.weighted for t in self.tasks):
            for t in self.tasks:
                out[("w", t.name)] = t.sample_weights(frame, seed)
        return out

    def _batches(self, epoch: int):
        """Training batches of `epoch`: files in an order drawn from (seed, epoch), each chunk's training
        rows merged into a shuffle buffer from which as many random rows leave as enter."""
        seed = int(self.spec.train.get("seed", 0))
        rng = np.random.default_rng([seed, epoch])
        files = self.train_files()
        buffer, pending = None, None
        size, batch = int(self.options["shuffle_buffer"]), self.batch_size
        for i in rng.permutation(files):
            for c, (frame, _, parts) in enumerate(self.chunks(int(i))):
                rows = frame[parts == 0]
                if not len(rows):
                    continue
                chunk = self.arrays(rows.reset_index(drop=True), (seed * 1_000_003 + int(i)) * 1_000_003 + c)
                if buffer is None or _len(buffer) < size:  # filling up
                    buffer = chunk if buffer is None else _concat([buffer, chunk])
                    if _len(buffer) <= size:
                        continue
                    chunk, buffer = _take(buffer, slice(size, None)), _take(buffer, slice(0, size))
                out = _mix(buffer, chunk, rng)
                pending = out if pending is None else _concat([pending, out])
                while _len(pending) >= batch:
                    yield self._structure(_take(pending, slice(0, batch)))
                    pending = _take(pending, slice(batch, None))
        if buffer is not None:
            rest = _take(buffer, rng.permutation(_len(buffer)))
            pending = rest if pending is None else _concat([pending, rest])
        while pending is not None and _len(pending):
            yield self._structure(_take(pending, slice(0, batch)))
            pending = _take(pending, slice(batch, None))

    def _structure(self, arrays: dict):
        x = {k[1]: v for k, v in arrays.items() if k[0] == "x"}
        y = {k[1]: v for k, v in arrays.items() if k[0] == "y"}
        w = {k[1]: v for k, v in arrays.items() if k[0] == "w"}
        return (x, y, w) if w else (x, y)

    def _signature(self):
        import tensorflow as tf

        x = {f["name"]: tf.TensorSpec([None], getattr(tf, raw_dtype(f))) for f in self.preprocessor.raw}
        y = {t.name: tf.TensorSpec([None, 1], tf.float32) for t in self.tasks}
        w = {t.name: tf.TensorSpec([None], tf.float32) for t in self.tasks}
        return (x, y, w) if any(t.weighted for t in self.tasks) else (x, y)

    def raw_epoch(self, epoch):
        """The epoch's batches of raw columns (before the preprocessing), as tf.data. `epoch`: an int,
        or a callable giving it when an iteration starts (`train_epoch`'s one dataset for all epochs)."""
        import tensorflow as tf

        epoch_now = epoch if callable(epoch) else (lambda: epoch)
        ds = tf.data.Dataset.from_generator(lambda: self._batches(int(epoch_now())), output_signature=self._signature())
        # The pass counted the training rows: Keras then knows the epoch's length (progress, no "ran out
        # of data" warning), and files changed since the pass are an error rather than a shorter epoch.
        return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(self.rows["train"] / self.batch_size)))

    def train_epoch(self, epoch: int):
        """The training batches of epoch `epoch` (0-based), preprocessed: the same batches in the same
        order for the same (train.seed, epoch) in any process.

        Every epoch gets the same tf.data object, built once: an iteration that starts after this
        call yields epoch `epoch`'s batches. (tf.data traces its functions, the preprocessing among
        them, whenever a dataset is built: a dataset per epoch left five graphs, ~4,000 objects in
        reference cycles, for each epoch, which only Python's rare full collections freed, and a
        long run's memory crept up with them; docs/reliability.md "Long runs".)"""
        import tensorflow as tf

        self._epoch = int(epoch)
        if getattr(self, "_train", None) is None:
            pre = self.preprocessor
            self._train = self.raw_epoch(lambda: self._epoch).map(
                lambda x, *rest: (pre(x), *rest), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True).prefetch(tf.data.AUTOTUNE)
        return self._train

    @property
    def train(self):
        """Epoch 0's training batches (`train_epoch` gives each epoch its own order)."""
        return self.train_epoch(0)

    def dataset(self, part: str, batch_size: int | None = None, labels: bool = True):
        """tf.data batches of the in-memory evaluation sample `part` ("validation" or "test")."""
        import tensorflow as tf

        if part == "train":
            return self.train_epoch(0)
        if part not in self.frames:
            raise ValueError(f"part must be one of train, {', '.join(self.frames)}, received {part!r}")
        key = (part, batch_size or self.batch_size, labels)
        if key not in self._cache:
            structure = self._structure(self.arrays(self.frames[part], int(self.spec.train.get("seed", 0))))
            pre = self.preprocessor
            ds = batches(structure if labels else structure[0], key[1])
            ds = ds.map((lambda x, *rest: (pre(x), *rest)) if labels else pre, num_parallel_calls=tf.data.AUTOTUNE)
            self._cache[key] = ds.cache().prefetch(tf.data.AUTOTUNE)
        return self._cache[key]

    @property
    def validation(self):
        return self.dataset("validation")

    @property
    def test(self):
        return self.dataset("test")


def _mix(buffer: dict, chunk: dict, rng) -> dict:
    """As many rows as `chunk` has, drawn uniformly without replacement from the buffer and the chunk
    together, in random order; the chunk's rows not drawn take the drawn buffer rows' places. A
    tf.data shuffle buffer fed the chunk row by row draws from the same distribution; this copies
    O(chunk) rows, not O(buffer)."""
    size, c = _len(buffer), _len(chunk)
    drawn = rng.choice(size + c, size=c, replace=False)
    from_buffer, from_chunk = drawn[drawn < size], drawn[drawn >= size] - size
    stay = np.ones(c, dtype=bool)
    stay[from_chunk] = False
    out = _concat([_take(buffer, from_buffer), _take(chunk, from_chunk)])
    out = _take(out, rng.permutation(c))
    for k, v in buffer.items():
        v[from_buffer] = chunk[k][stay]
    return out


def _len(arrays: dict) -> int:
    return len(next(iter(arrays.values())))


def _take(arrays: dict, index) -> dict:
    return {k: v[index] for k, v in arrays.items()}


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def conform_chunk(spec: Spec, tasks: list, raw: pd.DataFrame) -> pd.DataFrame:
    """One raw chunk conformed as kzoo.pipeline.conform_for conforms a whole table (weights, masked
    labels, label checks, declared vocabularies); rows are 1-based within the chunk."""
    frame = kdata.conform(raw, spec.dataset, weights=tuple(c for t in tasks for c in t.columns()),
                          labels_may_miss=tuple(t.label for t in tasks if t.config.get("missing_label") == "mask"))
    for t in tasks:
        t.check_labels(frame)
    check_declared(spec.features, frame)
    return frame


def prepare_stream(spec: Spec, data, batch_size: int) -> Streamed:
    """One pass over the shards in sorted order: statistics of the training rows (or of a sample),
    rows per split, and the evaluation samples; then the preprocessing stage."""
    options = {**DEFAULTS, **(spec.train.get("streaming") or {})}
    tasks = tasks_of(spec)
    _check_tasks(tasks)
    shards = Shards(_paths(data))
    splitter = Splitter(spec.train.get("split", {}), shards, int(spec.train.get("split", {}).get("seed", 0)))
    streamed = Streamed(spec=spec, stats={}, preprocessor=None, frames={}, batch_size=batch_size, tasks=tasks,
                        rows={}, info={}, shards=shards, splitter=splitter, options=options)
    stats = StreamStats(spec.features)
    samples = {p: Reservoir(options["eval_rows"]) for p in PARTS[1:]}
    rows = dict.fromkeys(PARTS, 0)
    sample = options["stats_sample"]
    share = math.ceil(sample / max(1, len(streamed.train_files()))) if sample else None
    empty = None
    for i in range(len(shards)):
        taken = 0
        for frame, h, parts in streamed.chunks(i):
            empty = frame.iloc[:0] if empty is None else empty
            for p, name in enumerate(PARTS):
                rows[name] += int((parts == p).sum())
            train = frame[parts == 0]
            if share is None or taken < share:
                stats.add(train if share is None else train.iloc[: share - taken])
                taken += len(train)
            for p, name in ((1, "validation"), (2, "test")):
                mask = parts == p
                if mask.any():
                    samples[name].offer(frame[mask], priority(h[mask]))
    if rows["train"] == 0:
        raise DataError(f"--data {os.fspath(data)!r}: no row falls in the training split "
                        f"({sum(rows.values())} rows in {len(shards)} files); check train.split")
    streamed.stats = stats.result()
    streamed.preprocessor = Preprocessor(spec.features, streamed.stats, spec.used_features())
    streamed.frames = {name: samples[name].rows(empty) for name in PARTS[1:]}
    streamed.rows = rows
    streamed.info = {"streaming": {
        "files": len(shards), "split": splitter.describe(), "rows": rows,
        "statistics_rows": stats.rows, "statistics": "sample" if share else "all training rows",
        "evaluated": {name: len(streamed.frames[name]) for name in PARTS[1:]},
        "eval_rows": options["eval_rows"], "shuffle_buffer": options["shuffle_buffer"]}}
    print(f"kzoo: streaming {len(shards)} file{'s' if len(shards) > 1 else ''}: {rows['train']} train / "
          f"{rows['validation']} validation / {rows['test']} test rows; evaluating on "
          f"{len(streamed.frames['validation'])} / {len(streamed.frames['test'])} of them", file=sys.stderr)
    return streamed
