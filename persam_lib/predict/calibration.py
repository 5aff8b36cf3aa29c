"""How far a run's probabilities can be taken at their word, and temperature scaling to fix it.

Measured on the run's out-of-fold predictions (every patient predicted once by a model that never
saw it): the reliability diagram (confidence of the predicted class against its accuracy, in bins),
the expected calibration error (ECE: the bins' |accuracy − confidence| weighted by their size) and
the Brier score (squared error of the probability vector against the one-hot label, summed over
classes), each with a bootstrap CI over patients. Temperature scaling (Guo et al. 2017) divides the
logits by one number T fitted to minimise the negative log-likelihood of the out-of-fold
predictions; it changes no prediction, only how sure they are. `calibrate_run` stores T in the run
(``calibration.json``), and `persam predict` applies it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from persam_lib.io.atomic import write_json_atomic
from persam_lib.train.run import Run

CALIBRATION_FILE = "calibration.json"
BINS = 10


def reliability(y: np.ndarray, probs: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin (equal width on [0, 1]): mean confidence of the predicted class, its
    accuracy and the number of patients (empty bins left out)."""
    confidence, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = [{"bin": b, "low": b / bins, "high": (b + 1) / bins, "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()), "n": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]
    return pd.DataFrame(rows, columns=["bin", "low", "high", "confidence", "accuracy", "n"])


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = BINS) -> float:
    """Σ over bins of (bin size / N) · |accuracy − confidence|; 0 is perfectly calibrated.

    Computed as Σ |correct − confidence summed in the bin| / N (the same sum), with no table, as the
    bootstrap calls it a thousand times."""
    if not len(y):
        return float("nan")
    confidence, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = np.bincount(which, correct, minlength=bins) - np.bincount(which, confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(y))


def brier_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean over patients of Σ_c (p_c − 1[y = c])²: 0 is perfect, 2 the worst."""
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(1).mean())


def with_ci(metric, y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high): ``metric(y, probs)`` and a 95% percentile bootstrap interval over patients."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(y), (n_boot, len(y)))
    values = np.array([metric(y[i], probs[i]) for i in picks])
    return float(metric(y, probs)), float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logits (log-probabilities, up to a constant) divided by ``temperature``."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def fit_temperature(y: np.ndarray, probs: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the negative log-likelihood of ``scaled(probs, T)``."""
    def nll(log_t: float) -> float:
        p = scaled(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


@dataclass(frozen=True)
class Calibration:
    """A run's calibration, before and after temperature scaling (each value with its 95% CI)."""

    temperature: float
    patients: int
    ece: tuple[float, float, float]
    brier: tuple[float, float, float]
    ece_scaled: tuple[float, float, float]
    brier_scaled: tuple[float, float, float]


def out_of_fold(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The run's out-of-fold labels (class indices) and probabilities (one row per patient)."""
    predictions = pd.read_csv(run.path / "predictions.csv", dtype={"patient_id": str})
    classes = list(run.classes)
    y = predictions["y_true"].map(classes.index).to_numpy()
    return y, predictions[[f"prob_{c}" for c in classes]].to_numpy()


def calibrate_run(run: Run, *, store: bool = True, seed: int = 0) -> Calibration:
    """Measure the run's calibration, fit the temperature on its out-of-fold predictions, and (with
    ``store``) write ``calibration.json`` into the run, which `persam predict` then applies."""
    if not (run.path / "predictions.csv").is_file():
        raise FileNotFoundError(f"{run.path}: no out-of-fold predictions.csv; finish the training first")
    y, probs = out_of_fold(run)
    t = fit_temperature(y, probs)
    after = scaled(probs, t)
    result = Calibration(t, len(y), with_ci(expected_calibration_error, y, probs, seed=seed), with_ci(brier_score, y, probs, seed=seed),
                         with_ci(expected_calibration_error, y, after, seed=seed), with_ci(brier_score, y, after, seed=seed))
    if store:
        write_json_atomic(run.path / CALIBRATION_FILE, asdict(result))
    return result


def stored_temperature(run: Run) -> float | None:
    """The temperature `calibrate_run` stored in the run, or None."""
    path = Path(run.path) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["temperature"])
