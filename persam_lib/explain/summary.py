"""Cohort-level summaries of attention shift and ground-truth scores, with bootstrap CIs over slides."""
from __future__ import annotations

import numpy as np
import pandas as pd

from persam_lib.explain.records import ORIGINAL


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean and a percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarise_shift(shift: pd.DataFrame) -> pd.DataFrame:
    """Per altered field: mean JSD, top-k Jaccard and mass moved over slides, each with a 95% CI."""
    rows = []
    for field, part in shift.groupby("field", sort=True):
        row: dict[str, object] = {"field": field, "slides": part["slide_id"].nunique()}
        for metric in ("jsd", "topk_jaccard", "mass_moved"):
            m, lo, hi = mean_ci(part.groupby("slide_id")[metric].mean().to_numpy())
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = m, lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_truth(scores: pd.DataFrame, deciding_field: str) -> pd.DataFrame:
    """Attention mass on the region that is diagnostic under the record, for the original record and
    for records whose deciding field was flipped; the uniform-attention baseline beside each."""
    flipped = scores["record"].str.contains(f"{deciding_field}=", regex=False)
    groups = {"original record": scores[scores["record"] == ORIGINAL], f"{deciding_field} altered": scores[flipped]}
    rows = []
    for name, part in groups.items():
        if part.empty:
            continue
        m, lo, hi = mean_ci(part["mass_diagnostic"].to_numpy())
        u, ulo, uhi = mean_ci(part["uniform_diagnostic"].to_numpy())
        rows.append({"record": name, "slides": part["slide_id"].nunique(), "mass_diagnostic": m, "mass_diagnostic_low": lo, "mass_diagnostic_high": hi, "uniform_baseline": u, "mass_other_region": part["mass_other_region"].mean()})
    return pd.DataFrame(rows)


def moved_to_new_region(scores: pd.DataFrame, deciding_field: str) -> pd.DataFrame:
    """Per slide whose deciding field was flipped: attention mass on the *newly* diagnostic region
    under the original record and under the altered one; ``moved`` is True when it grew.

    ``scores`` is `truth_scores`'s table, which holds each record's mass on every region.
    """
    original = scores[scores["record"] == ORIGINAL].set_index("slide_id")
    flipped = scores[scores["record"].str.contains(f"{deciding_field}=", regex=False)]
    before = np.array([original.at[row.slide_id, f"mass_{row.diagnostic_region}"] for row in flipped.itertuples()], dtype=float)
    after = flipped["mass_diagnostic"].to_numpy(dtype=float)
    return pd.DataFrame(
        {"slide_id": flipped["slide_id"].to_numpy(), "record": flipped["record"].to_numpy(), "new_region": flipped["diagnostic_region"].to_numpy(),
         "mass_before": before, "mass_after": after, "moved": after > before}
    )
