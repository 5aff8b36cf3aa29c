"""How far attention moves between two records of the same slide (pure functions)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from persam_lib.explain.records import ORIGINAL


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


def attention_shift(attention: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Per slide and altered record: JSD, top-k Jaccard and mass moved relative to the original record.

    ``attention`` has the columns of `persam_lib.explain.attention.ATTENTION_COLUMNS`.
    """
    rows = []
    for slide_id, slide in attention.groupby("slide_id", sort=False):
        by_record = {rec: part.sort_values(["y", "x"])["attention"].to_numpy() for rec, part in slide.groupby("record", sort=False)}
        if ORIGINAL not in by_record:
            continue
        base = by_record[ORIGINAL]
        for record, altered in by_record.items():
            if record == ORIGINAL:
                continue
            rows.append(
                {
                    "slide_id": slide_id,
                    "record": record,
                    "field": ";".join(edit.split("=")[0] for edit in record.split(";")),
                    "jsd": jensen_shannon(base, altered),
                    "topk_jaccard": topk_jaccard(base, altered, k),
                    "mass_moved": mass_moved(base, altered),
                }
            )
    return pd.DataFrame(rows, columns=["slide_id", "record", "field", "jsd", "topk_jaccard", "mass_moved"])
