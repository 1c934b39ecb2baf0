"""Statistics of streamed training rows, learned in one pass, chunk by chunk, equal to kzoo.features.fit_stats.

    StreamStats(features).add(frame)   counts per vocabulary value (merged across chunks: memory grows
                                       with the vocabulary, not the rows) and running moments of the
                                       numeric features (count, mean and sum of squared deviations in
                                       float64, merged by Chan et al.'s pairwise update)
    StreamStats.result()               the same dict fit_stats returns on all those rows at once: the same
                                       min_count / max_size cut, most frequent first, ties by value,
                                       declared vocabularies as declared, shared tables counted together
    Reservoir(k)                       the k rows with the lowest priority seen so far (the bounded
                                       validation and test frames the run evaluates on)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kzoo.features import ID_TYPES, _log, _values

_MERGE_AT = 200_000  # distinct values held in unmerged pieces before they are summed into one


class StreamStats:
    """fit_stats, one chunk at a time. `features`: the spec's features (as fit_stats takes them)."""

    def __init__(self, features: list[dict]):
        self.numeric = [f for f in features if f["type"] == "numeric"]
        self.moments = {f["name"]: (0, 0.0, 0.0) for f in self.numeric}  # n, mean, M2
        by_name = {f["name"]: f for f in features}
        self.vocab_of: dict[str, str] = {}  # feature -> what its vocabulary is counted under
        self.counted: dict[str, list[dict]] = {}  # table or feature -> features counted into it
        for f in features:
            if f["type"] in ID_TYPES and ("vocab" in f or not any(k in f for k in ("hash_buckets", "max_id"))):
                table = f.get("embedding")
                key = f"table:{table}" if table else f["name"]
                self.vocab_of[f["name"]] = key
                self.counted.setdefault(key, []).append(f)
        # A shared table's vocabulary follows its first feature's `vocab` settings, as in fit_stats.
        self.vocab_spec = {key: by_name[fs[0]["name"]].get("vocab", {}) for key, fs in self.counted.items()}
        self.counts: dict[str, list[pd.Series]] = {key: [] for key in self.counted}
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        """Count one chunk of conformed training rows."""
        self.rows += len(frame)
        for f in self.numeric:
            x = frame[f["name"]].astype("float64").fillna(f.get("fill", 0.0)).to_numpy()
            if f.get("norm") in ("log", "log_standard"):
                x = _log(x)
            if len(x):
                self.moments[f["name"]] = _merge(self.moments[f["name"]], (len(x), float(x.mean()),
                                                                            float(((x - x.mean()) ** 2).sum())))
        for key, features in self.counted.items():
            if "values" in self.vocab_spec[key]:
                continue  # declared: nothing to count
            for f in features:
                self.counts[key].append(_values(frame, f).astype(str).value_counts(sort=False))
            pieces = self.counts[key]
            if len(pieces) > 1 and sum(len(p) for p in pieces) > max(_MERGE_AT, 2 * len(pieces[0])):
                self.counts[key] = [_summed(pieces)]

    def result(self) -> dict:
        stats: dict[str, dict] = {}
        for f in self.numeric:
            n, mean, m2 = self.moments[f["name"]]
            std = float(np.sqrt(m2 / n)) if n else 1.0
            stats[f["name"]] = {"mean": float(mean) if n else 0.0, "std": std if std > 1e-12 else 1.0}
        vocabularies = {key: self._vocabulary(key) for key in self.counted}
        for name, key in self.vocab_of.items():
            stats[name] = {"vocab": vocabularies[key]}
        return stats

    def _vocabulary(self, key: str) -> list[str]:
        spec = self.vocab_spec[key]
        if "values" in spec:  # declared: its order is the ids' order, whatever the data
            return [str(v) for v in spec["values"]]
        counts = _summed(self.counts[key])
        counts = counts[counts >= spec.get("min_count", 1)]
        # Most frequent first, ties by value: kzoo.features._vocabulary's order, so the same rows give the same ids.
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if "max_size" in spec:
            ordered = ordered[: spec["max_size"]]
        return [str(v) for v, _ in ordered]


def _summed(pieces: list[pd.Series]) -> pd.Series:
    if not pieces:
        return pd.Series([], dtype="int64")
    if len(pieces) == 1:
        return pieces[0]
    return pd.concat(pieces).groupby(level=0, sort=False).sum()


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s update: (n, mean, M2) of two parts -> of their union."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * nb / n, sa + sb + delta * delta * na * nb / n


class Reservoir:
    """The `k` rows of lowest priority among all rows offered, kept in the order they were offered.
    Ties keep the row offered first, so the same stream gives the same rows."""

    def __init__(self, k: int):
        self.k = int(k)
        self.frame: pd.DataFrame | None = None
        self.priority = np.zeros(0, dtype=np.uint64)
        self.order = np.zeros(0, dtype=np.int64)
        self.seen = 0

    def offer(self, frame: pd.DataFrame, priority: np.ndarray) -> None:
        order = np.arange(self.seen, self.seen + len(frame), dtype=np.int64)
        self.seen += len(frame)
        if self.k == 0 or not len(frame):
            return
        if len(self.priority) >= self.k:  # full: only rows strictly below the highest kept can enter
            take = priority < self.priority.max()
            frame, priority, order = frame[take], priority[take], order[take]
            if not len(frame):
                return
        frame = frame.reset_index(drop=True)
        both = frame if self.frame is None else pd.concat([self.frame, frame], ignore_index=True)
        prio = np.concatenate([self.priority, priority])
        orders = np.concatenate([self.order, order])
        keep = np.sort(np.lexsort((orders, prio))[: self.k])  # lowest priority, earlier first; in offered order
        self.frame = both.iloc[keep].reset_index(drop=True)
        self.priority, self.order = prio[keep], orders[keep]

    def rows(self, empty: pd.DataFrame) -> pd.DataFrame:
        """The kept rows (`empty`, with the columns, when none)."""
        return self.frame if self.frame is not None else empty
