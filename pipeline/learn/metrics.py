"""Binary classification metrics, AGN = 1 = the positive class (pure numpy, no I/O).

The threshold is chosen on one split (validation) by :func:`choose_threshold` and applied to
another (test) by :func:`at_threshold`: a threshold picked on the test images (as the paper did,
on ~20 of them) makes its test numbers optimistic.
"""

from __future__ import annotations

import numpy as np


def confusion(y: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] of 0/1 truths and predictions."""
    y, predicted = np.asarray(y).astype(bool), np.asarray(predicted).astype(bool)
    return [[int((~y & ~predicted).sum()), int((~y & predicted).sum())],
            [int((y & ~predicted).sum()), int((y & predicted).sum())]]  # fmt: skip


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | int | list]:
    """Accuracy, balanced accuracy, precision, recall, F1 and the confusion matrix of
    ``p >= threshold`` (a ratio with an empty denominator is 0, as scikit-learn's zero_division=0)."""
    (tn, fp), (fn, tp) = confusion(y, np.asarray(p) >= threshold)
    n = tn + fp + fn + tp
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, n),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "confusion": [[tn, fp], [fn, tp]],
    }


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), one point per distinct score, from
    the strictest threshold (inf: nothing positive) down."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    scores, truth = np.asarray(p, dtype=np.float64)[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(truth)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, scores[last_of_tie]]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count half)."""
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at every distinct score, strictest first."""
    fpr, tpr, thresholds = roc_curve(y, p)
    y = np.asarray(y).astype(bool)
    tp, fp = tpr[1:] * y.sum(), fpr[1:] * (~y).sum()
    return tp / np.maximum(tp + fp, 1e-300), tpr[1:], thresholds[1:]


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: sum of (R_k - R_k-1) P_k."""
    precision, recall, _ = pr_curve(y, p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def choose_threshold(y: np.ndarray, p: np.ndarray, policy: str, value: float | None = None) -> float:
    """The threshold on scores ``p`` (of the validation split, labels ``y``) that a policy picks:
    ``balanced`` max balanced accuracy, ``youden`` max TPR - FPR (the same optimum, kept for its
    name), ``f1`` max F1, ``purity`` the lowest threshold whose precision >= ``value`` (the most
    AGN at that purity), ``fixed`` ``value``. Candidates are the midpoints between distinct scores.
    """
    if policy == "fixed":
        return float(value)  # type: ignore[arg-type]
    y = np.asarray(y).astype(bool)
    scores = np.unique(np.asarray(p, dtype=np.float64))
    if not len(scores):
        return 0.5
    candidates = np.r_[scores[0] / 2, (scores[1:] + scores[:-1]) / 2, (scores[-1] + 1) / 2]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    p = np.asarray(p, dtype=np.float64)
    sorted_pos, sorted_neg = np.sort(p[y]), np.sort(p[~y])
    tp = n_pos - np.searchsorted(sorted_pos, candidates, side="left") if y.any() else np.zeros(len(candidates))
    fp = len(sorted_neg) - np.searchsorted(sorted_neg, candidates, side="left")
    tpr, fpr = tp / n_pos, fp / n_neg
    if policy in ("balanced", "youden"):
        return float(candidates[np.argmax(tpr - fpr)])
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    if policy == "f1":
        f1 = np.where(precision + tpr > 0, 2 * precision * tpr / np.maximum(precision + tpr, 1e-300), 0.0)
        return float(candidates[np.argmax(f1)])
    if policy == "purity":
        pure = np.flatnonzero((precision >= value) & (tp > 0))
        if pure.size == 0:
            raise ValueError(f"no threshold reaches an AGN precision of {value} on the validation split")
        return float(candidates[pure[0]])
    raise ValueError(f"unknown threshold policy {policy!r}")
