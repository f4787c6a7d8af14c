"""Metrics equal scikit-learn's on fixed inputs; threshold policies pick what they promise."""

import numpy as np
import pytest
from sklearn import metrics as sk

from pipeline.learn import metrics


@pytest.fixture(params=[0, 1, 2])
def scored(request):
    rng = np.random.default_rng(request.param)
    y = (rng.random(400) < 0.35).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    p[::9] = np.round(p[::9], 1)  # ties
    return y, p


def test_metrics_at_a_threshold_equal_scikit_learn(scored):
    y, p = scored
    for threshold in (0.3, 0.5, 0.61):
        got = metrics.at_threshold(y, p, threshold)
        predicted = (p >= threshold).astype(int)
        assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
        assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, predicted))
        assert got["precision"] == pytest.approx(sk.precision_score(y, predicted, zero_division=0))
        assert got["recall"] == pytest.approx(sk.recall_score(y, predicted, zero_division=0))
        assert got["f1"] == pytest.approx(sk.f1_score(y, predicted, zero_division=0))
        assert got["confusion"] == sk.confusion_matrix(y, predicted, labels=[0, 1]).tolist()


def test_curves_and_areas_equal_scikit_learn(scored):
    y, p = scored
    assert metrics.roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p))
    assert metrics.pr_auc(y, p) == pytest.approx(sk.average_precision_score(y, p))
    fpr, tpr, _ = metrics.roc_curve(y, p)
    sk_fpr, sk_tpr, _ = sk.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_zero_division_and_one_class_inputs():
    got = metrics.at_threshold(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]), 0.5)
    assert got["precision"] == 0.0 and got["recall"] == 0.0 and got["f1"] == 0.0 and got["accuracy"] == 1.0


def test_each_policy_picks_its_optimum_among_all_thresholds(scored):
    y, p = scored
    grid = np.unique(np.r_[p, p + 1e-9, 0.0, 1.01])

    def best(score):
        return max(score((p >= t).astype(int)) for t in grid)

    t = metrics.choose_threshold(y, p, "balanced")
    assert sk.balanced_accuracy_score(y, p >= t) == pytest.approx(best(lambda q: sk.balanced_accuracy_score(y, q)))
    assert metrics.choose_threshold(y, p, "youden") == t  # max TPR - FPR is max balanced accuracy
    t = metrics.choose_threshold(y, p, "f1")
    assert sk.f1_score(y, p >= t) == pytest.approx(best(lambda q: sk.f1_score(y, q, zero_division=0)))
    t = metrics.choose_threshold(y, p, "purity", 0.8)
    assert sk.precision_score(y, p >= t) >= 0.8
    lower = [u for u in grid if u < t and sk.precision_score(y, p >= u, zero_division=0) >= 0.8 and (p >= u).any()]
    assert not lower or (p >= min(lower)).sum() == (p >= t).sum()  # nothing lower reaches the purity with more AGN
    assert metrics.choose_threshold(y, p, "fixed", 0.3) == 0.3
    with pytest.raises(ValueError, match="no threshold reaches an AGN precision of 1.0"):
        metrics.choose_threshold(np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1]), "purity", 1.0)
