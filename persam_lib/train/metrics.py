"""Classification metrics with bootstrap confidence intervals (pure functions)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition).

    Computed here rather than by scikit-learn, which warns whenever a small fold's predictions name
    a class its truth lacks: a warning that says nothing to the book's reader and prints a path.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


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
    """(estimate, low, high): the metric on all patients and a percentile bootstrap interval over patients."""
    fn = {"balanced_accuracy": lambda y, p: balanced_accuracy(y, p.argmax(1)), "auroc": macro_auroc}[metric]
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    estimate = fn(y_true, probs)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        if len(np.unique(y_true[idx])) < 2:
            continue
        stats.append(fn(y_true[idx], probs[idx]))
    alpha = (1 - level) / 2
    low, high = (np.quantile(stats, [alpha, 1 - alpha]) if stats else (float("nan"), float("nan")))
    return float(estimate), float(low), float(high)


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
