"""kzoo.metrics checked against independent computations (sklearn, brute force, hand arithmetic)."""

import itertools
import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from kzoo import metrics as M

log2 = math.log2


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.uniform(0.01, 0.99, size=n)
    y = (rng.uniform(size=n) < p**1.5).astype(int)  # deliberately miscalibrated
    return y, p


# ------------------------------------------------------------------ AUC
def _pairwise_auc(y, s):
    pos = [si for yi, si in zip(y, s) if yi == 1]
    neg = [si for yi, si in zip(y, s) if yi == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_sklearn(binary_data):
    y, p = binary_data
    assert M.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_with_ties_matches_bruteforce_and_sklearn():
    y = [1, 0, 1, 1, 0, 0, 1, 0, 0]
    s = [0.9, 0.9, 0.5, 0.2, 0.5, 0.1, 0.5, 0.2, 0.0]
    expected = _pairwise_auc(y, s)
    assert M.auc(y, s) == pytest.approx(expected, abs=1e-12)
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_heavy_ties_matches_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=3000)
    s = np.round(rng.normal(size=3000) + 0.5 * y, 1)  # many tied scores
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_extremes_and_column_vectors():
    assert M.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert M.auc([0, 1, 0, 1], [0.5] * 4) == 0.5
    col = np.array([[0], [1], [0], [1]])
    assert M.auc(col, np.array([[0.1], [0.8], [0.3], [0.6]])) == 1.0


def test_auc_errors():
    with pytest.raises(ValueError, match="single class"):
        M.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length mismatch"):
        M.auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        M.auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        M.auc(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        M.auc([], [])
    with pytest.raises(ValueError, match="NaN"):
        M.auc([0, 1], [0.1, float("nan")])


# ------------------------------------------------------------------ GAUC
def test_gauc_hand_computed():
    # group a: 4 impressions, pos scores {0.9, 0.3}, neg {0.5, 0.1} -> pairs won: 2 + 1 = 3 of 4
    # group b: 3 impressions, pos {0.2}, neg {0.4, 0.2} -> 0 + 0.5 of 2
    # group c: 2 impressions, only positives -> excluded
    # group d: 1 impression -> excluded
    y = [1, 0, 1, 0, 1, 0, 0, 1, 1, 0]
    s = [0.9, 0.5, 0.3, 0.1, 0.2, 0.4, 0.2, 0.7, 0.6, 0.8]
    g = ["a", "a", "a", "a", "b", "b", "b", "c", "c", "d"]
    auc_a, auc_b = 3 / 4, 0.5 / 2
    expected = (4 * auc_a + 3 * auc_b) / (4 + 3)
    assert M.gauc(y, s, g) == pytest.approx(expected, abs=1e-12)


def test_gauc_matches_per_group_sklearn(binary_data):
    y, p = binary_data
    groups = np.random.default_rng(1).integers(0, 50, size=y.size)
    num = den = 0
    for grp in np.unique(groups):
        m = groups == grp
        if len(np.unique(y[m])) == 2:
            num += m.sum() * roc_auc_score(y[m], p[m])
            den += m.sum()
    assert M.gauc(y, p, groups) == pytest.approx(num / den, abs=1e-12)


def test_gauc_single_group_equals_auc_and_nan_when_no_group_qualifies(binary_data):
    y, p = binary_data
    assert M.gauc(y, p, np.zeros(y.size)) == pytest.approx(M.auc(y, p), abs=1e-12)
    assert math.isnan(M.gauc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 3]))


def test_gauc_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        M.gauc([0, 1], [0.1, 0.2], [1, 1, 1])


# ------------------------------------------------------------------ LogLoss
def test_logloss_matches_sklearn(binary_data):
    y, p = binary_data
    assert M.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-10)


def test_logloss_hand_computed_and_clipping():
    expected = -(math.log(0.8) + math.log(1 - 0.4)) / 2
    assert M.logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected, rel=1e-12)
    # p = 0 for a positive is clipped to eps instead of giving inf
    assert M.logloss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7), rel=1e-9)


def test_logloss_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        M.logloss([0, 1, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.logloss([0, 1], [-2.0, 3.0])  # logits, not probabilities


# ------------------------------------------------------------------ LogMAE
def test_log_mae_hand_computed():
    y = [0.0, 3.0, 10.0]
    yhat = [1.0, 3.0, 4.0]
    expected = (abs(math.log(1) - math.log(2)) + 0 + abs(math.log(11) - math.log(5))) / 3
    assert M.log_mae(y, yhat) == pytest.approx(expected, rel=1e-12)


def test_log_mae_matches_sklearn_mae_of_log1p():
    rng = np.random.default_rng(2)
    y, yhat = rng.exponential(50, 500), rng.exponential(50, 500)
    assert M.log_mae(y, yhat) == pytest.approx(
        mean_absolute_error(np.log1p(y), np.log1p(yhat)), rel=1e-12
    )


def _log_mae_formula(y, yhat):
    """(1/N) * sum_i |log(1 + y_i) - log(1 + yhat_i)|, natural log, one term at a time."""
    terms = [abs(math.log(1.0 + float(a)) - math.log(1.0 + float(b))) for a, b in zip(y, yhat)]
    return sum(terms) / len(terms)


def test_log_mae_matches_its_formula_written_out():
    rng = np.random.default_rng(5)
    # zeros on either side, a large target, then heavy-tailed values as in LTV data
    y = np.concatenate([[0.0, 0.0, 1e3, 7.0], rng.exponential(20, 60)])
    yhat = np.concatenate([[0.0, 4.0, 0.0, 7.0], rng.exponential(20, 60)])
    expected = _log_mae_formula(y, yhat)
    assert M.log_mae(y, yhat) == pytest.approx(expected, rel=1e-10)
    # Symmetric in its arguments; column vectors and lists read as the same 1-D data.
    assert M.log_mae(yhat, y) == pytest.approx(expected, rel=1e-10)
    assert M.log_mae(y.reshape(-1, 1), list(yhat)) == pytest.approx(expected, rel=1e-10)


def test_log_mae_is_one_when_every_prediction_is_e_times_one_plus_target():
    # 1 + yhat = e (1 + y) makes each term exactly ln(e) = 1: natural log, with the +1 inside.
    y = np.array([0.0, 0.5, 3.0, 250.0])
    assert M.log_mae(y, math.e * (1.0 + y) - 1.0) == pytest.approx(1.0, rel=1e-12)
    assert M.log_mae(math.e * (1.0 + y) - 1.0, y) == pytest.approx(1.0, rel=1e-12)
    assert M.log_mae(y, y) == 0.0


def test_log_mae_errors():
    with pytest.raises(ValueError, match="non-negative"):
        M.log_mae([1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="length mismatch"):
        M.log_mae([1.0, 2.0], [1.0])


# ------------------------------------------------------------------ ECE / calibration
def test_calibration_points_match_sklearn(binary_data):
    y, p = binary_data
    for bins in (1, 5, 10, 15):
        mean_pred, mean_true, counts = M.calibration_curve_points(y, p, bins=bins)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
        np.testing.assert_allclose(mean_pred, prob_pred, rtol=1e-12)
        np.testing.assert_allclose(mean_true, prob_true, rtol=1e-12)
        assert counts.sum() == y.size


def test_ece_matches_sklearn_binning(binary_data):
    y, p = binary_data
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    edges = np.linspace(0, 1, 11)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=10)
    counts = counts[counts > 0]
    expected = np.sum(counts / y.size * np.abs(prob_true - prob_pred))
    assert M.ece(y, p, bins=10) == pytest.approx(expected, abs=1e-12)
    assert M.ece(y, p) > 0.01  # the fixture is miscalibrated on purpose


def test_ece_hand_computed():
    # bins of width 0.5: (0, 0.5] gets p = 0.1, 0.3 (y = 0, 1); (0.5, 1] gets p = 0.8, 0.9, 0.6 (y = 1, 1, 0)
    y = [0, 1, 1, 1, 0]
    p = [0.1, 0.3, 0.8, 0.9, 0.6]
    expected = 2 / 5 * abs(1 / 2 - (0.1 + 0.3) / 2) + 3 / 5 * abs(2 / 3 - (0.8 + 0.9 + 0.6) / 3)
    assert M.ece(y, p, bins=2) == pytest.approx(expected, abs=1e-12)
    mean_pred, mean_true, counts = M.calibration_curve_points(y, p, bins=3)
    # bins of width 1/3: (0, 1/3] -> p 0.1, 0.3 (y 0, 1); (1/3, 2/3] -> p 0.6 (y 0); (2/3, 1] -> p 0.8, 0.9 (y 1, 1)
    np.testing.assert_allclose(mean_pred, [(0.1 + 0.3) / 2, 0.6, (0.8 + 0.9) / 2])
    np.testing.assert_allclose(mean_true, [1 / 2, 0, 1])
    np.testing.assert_array_equal(counts, [2, 1, 2])
    # width 0.125: p fall in bins 0, 2, 4, 6, 7; empty bins are dropped
    mean_pred, mean_true, counts = M.calibration_curve_points(y, p, bins=8)
    np.testing.assert_allclose(mean_pred, [0.1, 0.3, 0.6, 0.8, 0.9])
    np.testing.assert_allclose(mean_true, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(counts, [1, 1, 1, 1, 1])


def test_ece_perfectly_calibrated_bins_is_zero():
    # every bin's mean label equals its mean prediction
    assert M.ece([0, 1, 0, 0, 1, 1], [0.5, 0.5, 0.0, 0.0, 1.0, 1.0], bins=10) == pytest.approx(0.0)


def test_ece_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        M.ece([0, 1], [0.5])
    with pytest.raises(ValueError, match="bins"):
        M.ece([0, 1], [0.2, 0.7], bins=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.calibration_curve_points([0, 1], [0.2, 1.7])


# ------------------------------------------------------------------ retrieval
def test_recall_at_k_hand_computed():
    relevant = [{1, 2}, [7], {5, 6, 8}]
    ranked = [[1, 3, 2, 4], [9, 8, 7, 6], [4, 3, 2, 1]]
    # k=2: q0 hits {1} of 2; q1 none of 1; q2 none of 3
    assert M.recall_at_k(relevant, ranked, 2) == pytest.approx((1 / 2 + 0 + 0) / 3)
    # k=3: q0 hits {1,2}; q1 hits {7}; q2 none
    assert M.recall_at_k(relevant, ranked, 3) == pytest.approx((2 / 2 + 1 / 1 + 0) / 3)
    # k larger than the candidate list uses all candidates
    assert M.recall_at_k(relevant, ranked, 10) == pytest.approx((1 + 1 + 0) / 3)


def test_ndcg_at_k_hand_computed():
    relevant = [{"a", "c"}, {"z"}]
    ranked = [["a", "b", "c", "d"], ["x", "y", "w", "z"]]
    # q0: hits at ranks 1 and 3, ideal has 2 hits; q1: hit at rank 4 is outside k=3
    q0 = (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3))
    assert M.ndcg_at_k(relevant, ranked, 3) == pytest.approx((q0 + 0) / 2, abs=1e-12)
    # k=4: q1 hit at rank 4, ideal = one hit at rank 1
    q1 = (1 / log2(5)) / (1 / log2(2))
    assert M.ndcg_at_k(relevant, ranked, 4) == pytest.approx((q0 + q1) / 2, abs=1e-12)


def test_ndcg_ideal_uses_min_k_and_num_relevant():
    # 5 relevant items but k=2: both top slots relevant -> perfect score
    assert M.ndcg_at_k([{1, 2, 3, 4, 5}], [[1, 2, 9]], 2) == pytest.approx(1.0)
    # only item at rank 2 relevant, k=2: (1/log2(3)) / (1/log2(2))
    assert M.ndcg_at_k([{2}], [[1, 2, 9]], 2) == pytest.approx((1 / log2(3)) / (1 / log2(2)))


def test_retrieval_duplicates_and_empty_relevant():
    # a repeated relevant item only counts once
    assert M.recall_at_k([{1, 2}], [[1, 1, 3]], 3) == pytest.approx(1 / 2)
    assert M.ndcg_at_k([{1}], [[1, 1, 3]], 3) == pytest.approx(1.0)
    # queries with no relevant items are skipped
    assert M.recall_at_k([set(), {4}], [[1, 2], [4, 5]], 1) == pytest.approx(1.0)
    assert math.isnan(M.ndcg_at_k([set()], [[1, 2]], 2))


def test_retrieval_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        M.recall_at_k([{1}], [[1, 2], [3, 4]], 1)
    with pytest.raises(ValueError, match="2-D"):
        M.ndcg_at_k([{1}], [1, 2, 3], 1)
    with pytest.raises(ValueError, match="k must be"):
        M.ndcg_at_k([{1}], [[1, 2]], 0)


# ------------------------------------------------------------------ reports
def test_binary_report(binary_data):
    y, p = binary_data
    groups = np.arange(y.size) % 7
    rep = M.binary_report(y, p, groups=groups)
    assert set(rep) == {"auc", "logloss", "ece", "ece_quantile", "calibration_slope", "calibration_intercept",
                        "mean_pred", "mean_label", "examples", "gauc"}
    assert rep["auc"] == pytest.approx(roc_auc_score(y, p))
    assert rep["logloss"] == pytest.approx(log_loss(y, p))
    assert rep["mean_pred"] == pytest.approx(p.mean())
    assert rep["mean_label"] == pytest.approx(y.mean())
    assert rep["examples"] == y.size and type(rep["examples"]) is int
    assert all(type(v) is float for k, v in rep.items() if k != "examples")
    json.dumps(rep)
    assert "gauc" not in M.binary_report(y, p)


def test_regression_report():
    rng = np.random.default_rng(3)
    y, yhat = rng.exponential(5, 300), rng.exponential(5, 300)
    rep = M.regression_report(y, yhat)
    assert set(rep) == {"mse", "mae", "log_mae", "examples"}
    assert rep["mse"] == pytest.approx(mean_squared_error(y, yhat))
    assert rep["mae"] == pytest.approx(mean_absolute_error(y, yhat))
    assert rep["log_mae"] == pytest.approx(_log_mae_formula(y, yhat), rel=1e-10)
    assert rep["examples"] == 300
    json.dumps(rep)
    assert M.regression_report([1.0, -2.0], [0.5, 0.5])["log_mae"] is None


def test_auc_difference_point_estimate_and_interval():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    strong = [y + rng.normal(0, s, y.size) for s in (0.6, 0.7)]  # two "seeds" of a good model
    weak = rng.normal(0, 1, y.size)  # chance level
    d = M.auc_difference(y, strong, weak, n_boot=300)
    expected = np.mean([roc_auc_score(y, s) for s in strong]) - roc_auc_score(y, weak)
    assert d["diff"] == pytest.approx(expected, abs=1e-12)
    assert 0 < d["low"] < d["diff"] < d["high"] and d["p_not_better"] == 0.0
    # Same resamples (same seed) with the models swapped: the interval mirrors.
    r = M.auc_difference(y, weak, strong, n_boot=300)
    assert r["diff"] == pytest.approx(-d["diff"]) and r["low"] == pytest.approx(-d["high"])
    assert r["p_not_better"] == 1.0


def test_auc_difference_interval_matches_a_plain_sklearn_bootstrap():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    a, b = y * 0.5 + rng.normal(0, 1, y.size), y * 0.4 + rng.normal(0, 1, y.size)
    d = M.auc_difference(y, a, b, n_boot=2000, seed=11)
    # An independent bootstrap with sklearn and its own random stream: the 95 % bounds agree
    # to bootstrap precision, and the interval is about as wide as the paired standard error says.
    boot = []
    r2 = np.random.default_rng(99)
    while len(boot) < 2000:
        i = r2.integers(0, y.size, y.size)
        if 0 < y[i].sum() < y.size:
            boot.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert d["low"] == pytest.approx(lo, abs=0.012) and d["high"] == pytest.approx(hi, abs=0.012)


def test_auc_difference_identical_models_and_errors():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.8, 0.3, 0.6, 0.4, 0.5])
    d = M.auc_difference(y, s, s, n_boot=50)
    assert d == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_not_better": 1.0}
    with pytest.raises(ValueError, match="length"):
        M.auc_difference(y, s, s[:-1])
    with pytest.raises(ValueError, match="level"):
        M.auc_difference(y, s, s, level=1.5)
    with pytest.raises(ValueError, match="empty"):
        M.auc_difference(y, [], s)
