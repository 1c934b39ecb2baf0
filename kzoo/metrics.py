"""Evaluation metrics used in recommender-system papers (NumPy; scikit-learn fits the calibration slope).

Every function accepts array-likes.  Column vectors such as ``(n, 1)`` are
flattened; anything that is not 1-D after that, lengths that disagree, empty
inputs or out-of-range values raise ``ValueError`` naming what was received.
This module deliberately imports no Keras/TensorFlow so it stays fast to load.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "auc",
    "gauc",
    "logloss",
    "log_mae",
    "ece",
    "calibration_curve_points",
    "calibration_slope_intercept",
    "recall_at_k",
    "ndcg_at_k",
    "binary_report",
    "regression_report",
]


# --------------------------------------------------------------------------- #
# input validation
# --------------------------------------------------------------------------- #
def _1d(x, name: str, dtype=float) -> np.ndarray:
    """Return ``x`` as a non-empty 1-D array; ``(n, 1)``/``(1, n)`` are flattened."""
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be 1-D array-like, got a scalar: {arr!r}")
    if arr.ndim > 1:
        if sum(d != 1 for d in arr.shape) > 1:
            raise ValueError(f"{name} must be 1-D (or a column vector), got shape {arr.shape}")
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{n}={l}" for n, l in lengths.items())
        raise ValueError(f"length mismatch: {got}")


def _binary_labels(y, name: str = "y_true") -> np.ndarray:
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{name} must contain only 0/1 labels, got e.g. {np.unique(y[bad])[:5]}")
    return y


def _in_unit_interval(p: np.ndarray, name: str) -> np.ndarray:
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"{name} must be probabilities in [0, 1], got range "
            f"[{p.min():.4g}, {p.max():.4g}] (did you pass logits?)"
        )
    return p


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


# --------------------------------------------------------------------------- #
# ranking quality of scores
# --------------------------------------------------------------------------- #
def auc(y_true, y_score) -> float:
    """ROC AUC via the Mann-Whitney rank statistic.

        AUC = (sum_{i: y_i=1} r_i - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)

    where ``r_i`` are 1-based ranks of ``y_score`` (ties get their average rank,
    so a tied positive/negative pair counts 1/2).  Raises ``ValueError`` when
    only one class is present.
    """
    y = _binary_labels(_1d(y_true, "y_true"))
    s = _1d(y_score, "y_score")
    _same_length(y_true=y, y_score=s)
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC is undefined with a single class: got {n_pos} positives and {n_neg} negatives"
        )
    # 1-based average ranks: a run of c tied values ending at position e gets e - (c - 1) / 2
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_difference(y_true, scores_a, scores_b, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of ``AUC(a) - AUC(b)`` on one test set.

    ``scores_a`` / ``scores_b`` are one score array each, or a list of them (e.g. one per
    training seed): the difference is then the mean over the runs of each model. Test rows are
    resampled with replacement ``n_boot`` times, the same rows for both models, so the interval
    reflects the test sample's noise with the pairing kept (Efron & Tibshirani 1993;
    resamples with a single class are redrawn).

    Returns ``{"diff", "low", "high", "p_not_better"}``: the difference on the full test set,
    the percentile interval at ``level``, and the fraction of resamples where ``a`` does not
    beat ``b`` (a one-sided bootstrap p-value for "a is better").
    """
    y = _binary_labels(_1d(y_true, "y_true"))
    runs = {}
    for name, scores in (("scores_a", scores_a), ("scores_b", scores_b)):
        arrays = [scores] if np.ndim(scores) == 1 else list(scores)
        if not arrays:
            raise ValueError(f"{name} is empty")
        runs[name] = [_1d(s, name) for s in arrays]
        for s in runs[name]:
            _same_length(y_true=y, **{name: s})
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")

    def diff(idx):
        yy = y[idx]
        mean_auc = [np.mean([auc(yy, s[idx]) for s in runs[k]]) for k in ("scores_a", "scores_b")]
        return mean_auc[0] - mean_auc[1]

    full = diff(np.arange(y.size))
    rng = np.random.default_rng(seed)
    boot = []
    while len(boot) < n_boot:
        idx = rng.integers(0, y.size, y.size)
        if 0 < y[idx].sum() < y.size:
            boot.append(diff(idx))
    boot = np.asarray(boot)
    tail = (1 - level) / 2
    return {"diff": float(full), "low": float(np.quantile(boot, tail)), "high": float(np.quantile(boot, 1 - tail)),
            "p_not_better": float(np.mean(boot <= 0))}


def gauc(y_true, y_score, groups) -> float:
    """Group AUC (Zhou et al., DIN, KDD 2018), impression weighted.

        GAUC = sum_g n_g * AUC_g / sum_g n_g

    over groups ``g`` (e.g. users) containing both classes; ``n_g`` is the
    number of examples (impressions) in ``g``.  Returns ``nan`` if no group
    qualifies.
    """
    y = _binary_labels(_1d(y_true, "y_true"))
    s = _1d(y_score, "y_score")
    g = _1d(groups, "groups", dtype=None)
    _same_length(y_true=y, y_score=s, groups=g)
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.flatnonzero(np.diff(inverse[order])) + 1
    total, weight = 0.0, 0
    for idx in np.split(order, splits):
        yg = y[idx]
        n_pos = yg.sum()
        if 0 < n_pos < yg.size:
            total += idx.size * auc(yg, s[idx])
            weight += idx.size
    return float(total / weight) if weight else float("nan")


# --------------------------------------------------------------------------- #
# probability quality
# --------------------------------------------------------------------------- #
def logloss(y_true, y_prob, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with clipping ``p -> clip(p, eps, 1 - eps)``.

        LogLoss = -(1/N) * sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)]

    ``y_true`` may be 0/1 or soft labels in [0, 1].
    """
    y = _in_unit_interval(_1d(y_true, "y_true"), "y_true")
    p = _in_unit_interval(_1d(y_prob, "y_prob"), "y_prob")
    _same_length(y_true=y, y_prob=p)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


STRATEGIES = ("uniform", "quantile")


def _bin_stats(y_true, y_prob, bins, strategy: str = "uniform"):
    """Per-bin (sum of p, sum of y, count).

    ``strategy="uniform"``: equal-width bins on [0, 1]; bin b covers ((b-1)/B, b/B], the first
    also 0. ``"quantile"``: equal-mass bins, whose edges are the B-quantiles of ``y_prob``, so
    each bin holds about N/B rows (tied scores stay in one bin). The edges are those of
    ``sklearn.calibration.calibration_curve(strategy=...)``.
    """
    y = _in_unit_interval(_1d(y_true, "y_true"), "y_true")
    p = _in_unit_interval(_1d(y_prob, "y_prob"), "y_prob")
    _same_length(y_true=y, y_prob=p)
    bins = _check_bins(bins)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(p, np.linspace(0.0, 100.0, bins + 1))
    else:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    ids = np.searchsorted(edges[1:-1], p)
    return (
        np.bincount(ids, weights=p, minlength=bins),
        np.bincount(ids, weights=y, minlength=bins),
        np.bincount(ids, minlength=bins),
    )


def ece(y_true, y_prob, bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error over ``bins`` bins, equal-width (``strategy="uniform"``, on
    [0, 1]) or equal-mass (``"quantile"``: about N/B rows each, Nixon et al. 2019's adaptive ECE).

        ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|
            = (1/N) * sum_b |sum(y in b) - sum(p in b)|

    CTR scores crowd near 0, so equal-width bins put most rows in the first bin; the equal-mass
    form resolves that region.
    """
    p_sum, y_sum, counts = _bin_stats(y_true, y_prob, bins, strategy)
    return float(np.abs(y_sum - p_sum).sum() / counts.sum())


def calibration_curve_points(y_true, y_prob, bins: int = 10, strategy: str = "uniform"):
    """Reliability-plot points for the non-empty bins of :func:`ece`.

    Returns ``(mean_pred, mean_true, counts)``: per bin, mean(p in b),
    mean(y in b) and n_b, ordered by bin.
    """
    p_sum, y_sum, counts = _bin_stats(y_true, y_prob, bins, strategy)
    nz = counts > 0
    return p_sum[nz] / counts[nz], y_sum[nz] / counts[nz], counts[nz]


def calibration_slope_intercept(y_true, y_prob, eps: float = 1e-7) -> tuple[float, float]:
    """Calibration slope and intercept (Cox 1958): the unpenalised logistic regression

        logit P(y = 1) = intercept + slope * logit(p),     p clipped to [eps, 1 - eps]

    fitted with scikit-learn. Calibrated scores give slope 1 and intercept 0; a slope below 1
    means over-confident scores (too spread out), above 1 under-confident ones.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y = _binary_labels(_1d(y_true, "y_true"))
    p = _in_unit_interval(_1d(y_prob, "y_prob"), "y_prob")
    _same_length(y_true=y, y_prob=p)
    if y.min() == y.max():
        raise ValueError(f"calibration slope is undefined with a single class: all labels are {y[0]:g}")
    p = np.clip(p, eps, 1.0 - eps)
    x = (np.log(p) - np.log1p(-p)).reshape(-1, 1)
    with warnings.catch_warnings():
        # Separable labels have no finite maximum: lbfgs stops at a large slope, which is the answer.
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


# --------------------------------------------------------------------------- #
# regression
# --------------------------------------------------------------------------- #
def _regression_inputs(y_true, y_pred):
    y = _1d(y_true, "y_true")
    p = _1d(y_pred, "y_pred")
    _same_length(y_true=y, y_pred=p)
    return y, p


def log_mae(y_true, y_pred) -> float:
    """LogMAE for non-negative targets (LTV / watch-time papers).

        LogMAE = (1/N) * sum_i |log(1 + y_i) - log(1 + yhat_i)|

    Raises ``ValueError`` if any target or prediction is negative.
    """
    y, p = _regression_inputs(y_true, y_pred)
    for name, a in (("y_true", y), ("y_pred", p)):
        if a.min() < 0:
            raise ValueError(f"{name} must be non-negative for log_mae, got min {a.min():.4g}")
    return float(np.mean(np.abs(np.log1p(y) - np.log1p(p))))


def prob_log_mae(teacher, student, eps: float = 1e-7) -> float:
    """LogMAE of probabilities, the offline metric of distilling a lightweight ranker to a heavy one
    (MTMD, Yang et al. AdKDD 2025), as the mean absolute error of the logs:

        LogMAE = (1/N) * sum_i |log(max(p_i, eps)) - log(max(t_i, eps))|

    a relative error, so a CTR of 0.001 predicted as 0.002 costs as much as 0.1 as 0.2.
    (`log_mae` is the log1p form for non-negative values such as watch time.)
    """
    t, p = _regression_inputs(teacher, student)
    return float(np.mean(np.abs(np.log(np.maximum(p, eps)) - np.log(np.maximum(t, eps)))))


def binary_kl(teacher, student, eps: float = 1e-7) -> float:
    """Mean KL(t || p) of Bernoulli probabilities: t·log(t/p) + (1-t)·log((1-t)/(1-p))."""
    t, p = _regression_inputs(teacher, student)
    p = np.clip(p, eps, 1 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(t > 0, t * np.log(t / p), 0.0)
        b = np.where(t < 1, (1 - t) * np.log((1 - t) / (1 - p)), 0.0)
    return float(np.mean(a + b))


# --------------------------------------------------------------------------- #
# retrieval
# --------------------------------------------------------------------------- #
def _retrieval_inputs(relevant, ranked, k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (queries x candidates), got shape {ranked.shape}")
    relevant = list(relevant)
    if len(relevant) != ranked.shape[0]:
        raise ValueError(
            f"length mismatch: relevant has {len(relevant)} queries, ranked has {ranked.shape[0]}"
        )
    if not relevant:
        raise ValueError("relevant/ranked contain no queries")
    return [set(r) for r in relevant], ranked[:, : int(k)].tolist()


def _hits(rel: set, top: list) -> list[bool]:
    """Hit flags for ``top``; a repeated item only counts at its first position."""
    seen, flags = set(), []
    for item in top:
        flags.append(item in rel and item not in seen)
        seen.add(item)
    return flags


def recall_at_k(relevant, ranked, k: int) -> float:
    """Mean Recall@k over queries with binary relevance.

        Recall@k(q) = |rel_q ∩ top_k(q)| / |rel_q|

    Queries with an empty relevant set are skipped; ``nan`` if all are empty.
    """
    rel, top = _retrieval_inputs(relevant, ranked, k)
    vals = [sum(_hits(r, t)) / len(r) for r, t in zip(rel, top) if r]
    return float(np.mean(vals)) if vals else float("nan")


def ndcg_at_k(relevant, ranked, k: int) -> float:
    """Mean NDCG@k over queries with binary relevance.

        DCG@k  = sum_{i=1..k} [item_i in rel] / log2(i + 1)
        IDCG@k = sum_{i=1..min(k, |rel|)} 1 / log2(i + 1)
        NDCG@k = DCG@k / IDCG@k

    Queries with an empty relevant set are skipped; ``nan`` if all are empty.
    """
    rel, top = _retrieval_inputs(relevant, ranked, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for r, t in zip(rel, top):
        if r:
            dcg = float(np.dot(_hits(r, t), discounts[: len(t)]))
            vals.append(dcg / discounts[: min(k, len(r))].sum())
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------- #
# reports (JSON-serialisable dicts)
# --------------------------------------------------------------------------- #
def binary_report(y_true, y_prob, groups=None) -> dict:
    """AUC, LogLoss, ECE (equal-width and equal-mass bins), calibration slope and intercept,
    mean prediction/label and example count (+ GAUC).

    With a single class in ``y_true`` (a small test split, a rare event) AUC, GAUC and the
    calibration slope are undefined: they are reported as None (null in metrics.json) with a
    warning, and the rest of the report stands.
    """
    y = _binary_labels(_1d(y_true, "y_true"))
    p = _in_unit_interval(_1d(y_prob, "y_prob"), "y_prob")
    _same_length(y_true=y, y_prob=p)
    single = y.size == 0 or y.min() == y.max()
    if single:
        import warnings

        warnings.warn(f"AUC and the calibration slope are undefined on {y.size} rows with one class "
                      f"(all labels {y[0]:g}): reported as null" if y.size else "no rows to evaluate: metrics are null",
                      UserWarning, stacklevel=2)
    report = {
        "auc": None if single else auc(y, p),
        "logloss": logloss(y, p),
        "ece": ece(y, p),
        "ece_quantile": ece(y, p, strategy="quantile"),
        "mean_pred": float(p.mean()),
        "mean_label": float(y.mean()),
        "examples": int(y.size),
    }
    report["calibration_slope"], report["calibration_intercept"] = (None, None) if single else \
        calibration_slope_intercept(y, p)
    if groups is not None:
        value = None if single else gauc(y, p, groups)
        report["gauc"] = None if value is None or np.isnan(value) else value
    return report


def regression_report(y_true, y_pred) -> dict:
    """MSE, MAE, LogMAE and example count.

    ``log_mae`` is ``None`` when any target or prediction is negative.
    """
    y, p = _regression_inputs(y_true, y_pred)
    err = y - p
    return {
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "log_mae": log_mae(y, p) if min(y.min(), p.min()) >= 0 else None,
        "examples": int(y.size),
    }
