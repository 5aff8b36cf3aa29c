"""How far attention (and the prediction) moves between two records of the same slide (pure functions)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from persam_lib.explain.records import ORIGINAL, field_of

SHIFT_METRICS = ("jsd", "topk_jaccard", "mass_moved")


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits (0 = identical, 1 = disjoint) between two distributions."""
    p = np.asarray(p, dtype=np.float64) / np.sum(p)
    q = np.asarray(q, dtype=np.float64) / np.sum(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0)


def topk_jaccard(p: np.ndarray, q: np.ndarray, k: int) -> float:
    """Jaccard overlap of the ``k`` most-attended patches under ``p`` and under ``q`` (1 = same set)."""
    k = min(k, len(p))
    top_p = set(np.argsort(-np.asarray(p), kind="stable")[:k])
    top_q = set(np.argsort(-np.asarray(q), kind="stable")[:k])
    return len(top_p & top_q) / len(top_p | top_q)


def mass_moved(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance: the fraction of attention mass that has to move to turn p into q."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def attention_shift(attention: pd.DataFrame, predictions: pd.DataFrame | None = None, k: int = 10, column: str = "attention") -> pd.DataFrame:
    """Per slide and altered record: JSD, top-k Jaccard and mass moved relative to the original record.

    ``attention`` has the columns of `persam_lib.explain.attention.ATTENTION_COLUMNS` (``column``
    picks the map: ``attention``, ``attention_rollout``, ...). With ``predictions`` (the
    explanation's per-record table) two columns more: ``prob_change``, how much the probability of
    the class predicted under the original record changed, and ``prediction_flipped``.
    """
    rows = []
    x, y, record_of, values = (attention[name].to_numpy() for name in ("x", "y", "record", column))
    positions = attention.groupby("slide_id", sort=False).indices  # each slide's rows, in table order
    for slide_id in pd.unique(attention["slide_id"]):
        at = positions[slide_id]
        by_record = {}
        for rec in pd.unique(record_of[at]):
            part = at[record_of[at] == rec]
            by_record[rec] = values[part[np.lexsort((x[part], y[part]))]]  # patches in (y, x) order
        if ORIGINAL not in by_record:
            continue
        base = by_record[ORIGINAL]
        for record, altered in by_record.items():
            if record != ORIGINAL:
                rows.append({"slide_id": slide_id, "record": record, "field": field_of(record), "jsd": jensen_shannon(base, altered), "topk_jaccard": topk_jaccard(base, altered, k), "mass_moved": mass_moved(base, altered)})
    shift = pd.DataFrame(rows, columns=["slide_id", "record", "field", *SHIFT_METRICS])
    if predictions is None:
        return shift
    return shift.merge(prediction_change(predictions), on=["slide_id", "record"], how="left")


def prediction_change(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per slide and altered record: the change in probability of the class predicted under the
    original record (``prob_change``, negative = less confident) and whether the prediction flipped."""
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    original = predictions[predictions["record"] == ORIGINAL].set_index("slide_id")
    altered = predictions[predictions["record"] != ORIGINAL]
    predicted = original.loc[altered["slide_id"], "y_pred"].to_numpy()
    column = ["prob_" + c for c in predicted]
    before = np.array([original.at[s, c] for s, c in zip(altered["slide_id"], column)], dtype=float)
    after = altered[prob_columns].to_numpy()[np.arange(len(altered)), [prob_columns.index(c) for c in column]] if len(altered) else np.zeros(0)
    return pd.DataFrame({"slide_id": altered["slide_id"].to_numpy(), "record": altered["record"].to_numpy(), "prob_change": after - before, "prediction_flipped": altered["y_pred"].to_numpy() != predicted})
