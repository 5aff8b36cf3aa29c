"""Classification metrics with bootstrap confidence intervals (pure functions)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score


BOOTSTRAP_BLOCK = 100  # resamples scored at once


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition).

    Computed here rather than by scikit-learn, which warns whenever a small fold's predictions name
    a class its truth lacks: a warning that says nothing to the book's reader and prints a path.
    """
    return float(balanced_accuracy_rows(np.asarray(y_true)[None], np.asarray(y_pred)[None])[0])


def macro_auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over classes (binary: AUROC of the positive class); NaN if a class is absent."""
    y_true = np.asarray(y_true)
    n_classes = probs.shape[1]
    if len(np.unique(y_true)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    present = [c for c in range(n_classes) if 0 < (y_true == c).sum() < len(y_true)]
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, metric: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): the metric on all patients and a percentile bootstrap interval over patients.

    Resamples with fewer than two classes are left out (their metric is undefined). All resamples
    are scored at once (`balanced_accuracy_rows`, `macro_auroc_rows`): the same values as scoring
    them one by one, in a fraction of the time (every run of the book computes two of these).
    """
    if metric not in ("balanced_accuracy", "auroc"):
        raise KeyError(metric)
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    estimate = balanced_accuracy(y_true, probs.argmax(1)) if metric == "balanced_accuracy" else macro_auroc(y_true, probs)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(y_true), (n_boot, len(y_true)))  # the same draws as n_boot draws of one resample each
    ys = y_true[picks]
    usable = (ys != ys[:, :1]).any(1)  # two classes at least
    ys, picks = ys[usable], picks[usable]
    parts = []
    for start in range(0, len(picks), BOOTSTRAP_BLOCK):  # a block of resamples at a time: memory stays small for large cohorts
        block, y_block = picks[start : start + BOOTSTRAP_BLOCK], ys[start : start + BOOTSTRAP_BLOCK]
        parts.append(balanced_accuracy_rows(y_block, probs.argmax(1)[block]) if metric == "balanced_accuracy" else macro_auroc_rows(y_block, probs[block], probs.shape[1]))
    stats = np.concatenate(parts) if parts else np.zeros(0)
    stats = stats[np.isfinite(stats)]
    alpha = (1 - level) / 2
    low, high = (np.quantile(stats, [alpha, 1 - alpha]) if len(stats) else (float("nan"), float("nan")))
    return float(estimate), float(low), float(high)


def balanced_accuracy_rows(y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """`balanced_accuracy` of each row of ``y`` (R, n) against ``y_pred`` (R, n): the mean recall
    over the classes present in the row."""
    recalls = []
    for c in np.unique(y):
        members = y == c
        count = members.sum(1)
        recalls.append(np.where(count > 0, (members & (y_pred == c)).sum(1) / np.maximum(count, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def binary_auroc_rows(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The AUROC of ``scores`` (R, n) for ``positive`` (R, n, bool), row by row, from average ranks
    (the Mann–Whitney statistic: ties count one half, as scikit-learn's); NaN for a row with one class."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (np.where(positive, ranks, 0.0).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def macro_auroc_rows(y: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """`macro_auroc` of each row: ``y`` (R, n), ``probs`` (R, n, C)."""
    if n_classes == 2:
        return binary_auroc_rows(y == 1, probs[..., 1])
    per_class = np.stack([binary_auroc_rows(y == c, probs[..., c]) for c in range(n_classes)])
    with np.errstate(invalid="ignore"):
        return np.nanmean(per_class, axis=0) if np.isfinite(per_class).any() else np.full(y.shape[0], np.nan)


def summarise(y_true: np.ndarray, probs: np.ndarray, seed: int = 0, classes: list[str] | None = None) -> dict:
    """Balanced accuracy and macro AUROC with 95% bootstrap CIs, per-class F1, confusion matrix, patient count."""
    y_true = np.asarray(y_true)
    out: dict = {"n": int(len(y_true))}
    for metric in ("balanced_accuracy", "auroc"):
        est, low, high = bootstrap_ci(y_true, probs, metric, seed=seed)
        out[metric], out[f"{metric}_low"], out[f"{metric}_high"] = est, low, high
    labels = list(range(probs.shape[1]))
    names = classes or [str(c) for c in labels]
    y_pred = probs.argmax(1)
    out["f1"] = {name: float(f) for name, f in zip(names, f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0))}
    out["confusion_matrix"] = {"classes": names, "rows_true_columns_predicted": confusion_matrix(y_true, y_pred, labels=labels).tolist()}
    return out
