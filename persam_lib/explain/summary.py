"""Cohort-level summaries of attention shift and ground-truth scores, with bootstrap CIs over slides,
and the null test: does altering a field move attention more than altering one the model should ignore?"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from persam_lib.explain.records import ORIGINAL
from persam_lib.explain.shift import SHIFT_METRICS


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


def _with_ci(row: dict, name: str, values: np.ndarray) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = mean_ci(values)


def per_slide(shift: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Slides × fields: the slide's mean ``metric`` over that field's alterations (one value per slide and field)."""
    return shift.pivot_table(index="slide_id", columns="field", values=metric, aggfunc="mean")


def summarise_shift(shift: pd.DataFrame) -> pd.DataFrame:
    """Per altered field: mean JSD, top-k Jaccard, mass moved (and, when present, change in the
    predicted class's probability and the share of predictions flipped) over slides, each with a
    95% bootstrap CI over slides."""
    metrics = [m for m in (*SHIFT_METRICS, "prob_change", "prediction_flipped") if m in shift]
    rows = []
    for field, part in shift.groupby("field", sort=True):
        row: dict[str, object] = {"field": field, "slides": part["slide_id"].nunique()}
        for metric in metrics:
            _with_ci(row, metric, part.groupby("slide_id")[metric].mean().astype(float).to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def null_comparison(shift: pd.DataFrame, null_fields: list[str], metric: str = "jsd", alpha: float = 0.05) -> pd.DataFrame:
    """Each altered field against each null field (one the model should ignore), paired by slide.

    Per slide the difference is (mean ``metric`` when altering the field) − (the same for the null
    field); reported: the mean of each, the mean difference with a 95% bootstrap CI, and the
    one-sided Wilcoxon signed-rank p-value for "the field moves attention more than the null".
    ``moves_more`` needs both: p < ``alpha`` and the CI of the mean difference above 0 (the rank
    test alone can call a skewed set of tiny differences "more" while the mean difference is 0). Similarity metrics (top-k Jaccard) are turned into
    dissimilarities (1 − value) first, so "more" always means "moved further".
    """
    table = per_slide(shift, metric)
    if metric == "topk_jaccard":
        table = 1 - table
    rows = []
    for null in null_fields:
        if null not in table:
            continue
        for field in table.columns:
            if field == null or field in null_fields:
                continue
            pair = table[[field, null]].dropna()
            if pair.empty:
                continue
            diff = (pair[field] - pair[null]).to_numpy()
            row: dict[str, object] = {"field": field, "null_field": null, "metric": metric if metric != "topk_jaccard" else "1 - topk_jaccard", "slides": len(pair), "field_mean": float(pair[field].mean()), "null_mean": float(pair[null].mean())}
            _with_ci(row, "difference", diff)
            row["p_value"] = float(wilcoxon(diff, alternative="greater").pvalue) if np.any(diff != 0) else 1.0
            row["moves_more"] = bool(row["p_value"] < alpha and row["difference_low"] > 0)
            rows.append(row)
    columns = ["field", "null_field", "metric", "slides", "field_mean", "null_mean", "difference", "difference_low", "difference_high", "p_value", "moves_more"]
    return pd.DataFrame(rows, columns=columns)


def selectivity_ci(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(value, low, high): attention mass on the diagnostic region as a share of the mass on both
    lesion regions — Σ diagnostic / Σ (diagnostic + other region) over the rows of `truth_scores`
    (1 = nothing on the region the record says does not count) — with a percentile bootstrap
    interval over rows. A ratio of sums, so slides that attend little to either region weigh little."""
    diagnostic = scores["mass_diagnostic"].to_numpy(dtype=float)
    both = diagnostic + scores["mass_other_region"].to_numpy(dtype=float)
    if len(both) == 0 or both.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(both), (n_boot, len(both)))
    ratios = diagnostic[picks].sum(1) / np.maximum(both[picks].sum(1), 1e-12)
    alpha = (1 - level) / 2
    return float(diagnostic.sum() / both.sum()), float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))


def summarise_truth(scores: dict[str, pd.DataFrame], deciding_field: str) -> pd.DataFrame:
    """Per source of attention (a model, or the ``uniform`` and ``random`` baselines) and record
    group (the original record; records with the deciding field altered): attention mass on the
    region that is diagnostic under the record and the AUROC of attention for patches inside it,
    each with a 95% bootstrap CI over slides, the mass on the other region, and the *selectivity*
    (mass on the diagnostic region / mass on both lesion regions, 1 = none on the
    region the record says does not count; `selectivity_ci`)."""
    rows = []
    for source, table in scores.items():
        flipped = table["record"].str.contains(f"{deciding_field}=", regex=False)
        for group, part in (("original record", table[table["record"] == ORIGINAL]), (f"{deciding_field} altered", table[flipped])):
            if part.empty:
                continue
            row: dict[str, object] = {"attention": source, "record": group, "slides": part["slide_id"].nunique()}
            _with_ci(row, "mass_diagnostic", part["mass_diagnostic"].to_numpy())
            _with_ci(row, "auroc", part["auroc"].to_numpy())
            row["mass_other_region"] = float(part["mass_other_region"].mean())
            row["selectivity"], row["selectivity_low"], row["selectivity_high"] = selectivity_ci(part)
            rows.append(row)
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


def moved_summary(moved: pd.DataFrame) -> dict[str, float]:
    """The share of slides whose attention moved to the newly diagnostic region (with a 95% CI) and the mean masses."""
    share, low, high = mean_ci(moved["moved"].astype(float).to_numpy())
    return {"slides": int(moved["slide_id"].nunique()), "moved": share, "moved_low": low, "moved_high": high, "mass_before": float(moved["mass_before"].mean()), "mass_after": float(moved["mass_after"].mean())}
