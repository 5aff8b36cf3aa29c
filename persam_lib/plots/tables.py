"""Tables the book shows, formatted the same way in every chapter."""
from __future__ import annotations

import pandas as pd


def with_intervals(table: pd.DataFrame, metrics: list[str], fmt: str = ".3g") -> pd.DataFrame:
    """Replace each ``metric``, ``metric_low``, ``metric_high`` triple by one column "est [low, high]"."""
    out = table.copy()
    for metric in metrics:
        low, high = f"{metric}_low", f"{metric}_high"
        out[metric] = [f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" for m, lo, hi in zip(out[metric], out[low], out[high])]
        out = out.drop(columns=[low, high])
    return out
