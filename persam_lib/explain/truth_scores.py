"""Where attention falls against a cohort's ground truth: how much of each map lies on the region
that is diagnostic under each record, beside baseline maps (uniform, random).

The ground truth itself (masks, regions table, deciding field) is cohort data and is read through
`persam_lib.cohort.truth`; this module only scores attention against it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from persam_lib.cohort.manifest import Cohort
from persam_lib.cohort.truth import GroundTruth
from persam_lib.explain.records import ORIGINAL


def patch_auroc(attention: np.ndarray, inside: np.ndarray) -> float:
    """AUROC of attention as a score for "this patch lies in the region" (fraction >= 0.5); NaN when
    all patches are on one side. 0.5 = attention says nothing about the region; ties count half."""
    positive = np.asarray(inside) >= 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(attention)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (no NaN), ties given their average rank: `scipy.stats.rankdata`'s
    default, the same numbers, without its checks and dispatch (a report ranks thousands of maps)."""
    values = np.asarray(values)
    sorter = np.argsort(values, kind="mergesort")
    inverse = np.empty(sorter.size, dtype=np.intp)
    inverse[sorter] = np.arange(sorter.size, dtype=np.intp)
    ordered = values[sorter]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = new.cumsum()[inverse]
    bounds = np.r_[np.nonzero(new)[0], len(new)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def with_baselines(attention: pd.DataFrame, column: str = "attention", seed: int = 0) -> pd.DataFrame:
    """The attention table with two baseline maps beside ``column``: ``uniform`` (every patch the
    same) and ``random`` (the map's own values dealt to the slide's patches at random: as
    concentrated as the model, placed by chance)."""
    rng = np.random.default_rng(seed)
    out = attention.copy()
    sizes = out.groupby(["slide_id", "record"], sort=False)[column].transform("size")
    out["uniform"] = 1.0 / sizes
    shuffled = out[column].to_numpy().copy()
    for index in out.groupby(["slide_id", "record"], sort=False).indices.values():
        shuffled[index] = rng.permutation(shuffled[index])
    out["random"] = shuffled
    return out


def truth_scores(attention: pd.DataFrame, cohort: Cohort, truth: GroundTruth, column: str = "attention") -> pd.DataFrame:
    """Per slide and record: the diagnostic region under that record and how the map ``column`` meets it.

    Columns: slide_id, record, deciding_value, diagnostic_region, mass_diagnostic (attention mass
    inside the diagnostic region), auroc (`patch_auroc` for that region), mass_other_region,
    uniform_diagnostic (the mass a uniform map would put there), and ``mass_<region>`` for every
    region kind, so later comparisons need no second pass over masks.
    """
    return truth_scores_of(attention, cohort, truth, [column])[column]


def truth_scores_of(attention: pd.DataFrame, cohort: Cohort, truth: GroundTruth, columns: list[str]) -> dict[str, pd.DataFrame]:
    """`truth_scores` for several maps of one table at once: each slide's masks are read and its
    region fractions computed once, whatever the number of maps."""
    records = cohort.records()
    patients = cohort.slides.set_index("slide_id")["patient_id"]
    rows: dict[str, list[dict]] = {column: [] for column in columns}
    xy, sizes, record_of = attention[["x", "y"]].to_numpy(), attention["size"].to_numpy(), attention["record"].to_numpy()
    maps = {column: attention[column].to_numpy() for column in columns}
    positions = attention.groupby("slide_id", sort=False).indices  # each slide's rows, in table order
    for slide_id in pd.unique(attention["slide_id"]):
        at = positions[slide_id]
        original_value = records.loc[patients[slide_id], truth.deciding_field]
        first = at[record_of[at] == record_of[at[0]]]
        coords = xy[first]
        fractions = truth.region_fractions(slide_id, coords, int(sizes[first[0]]))
        key = None  # patch -> row of coords, built only for a record whose patches come in another order
        for record in pd.unique(record_of[at]):
            part = at[record_of[at] == record]
            value = _deciding_value(record, truth.deciding_field, original_value)
            region = truth.region_for(value)
            if np.array_equal(xy[part], coords):
                order = np.arange(len(coords))
            else:
                key = key or {p: i for i, p in enumerate(map(tuple, coords))}
                order = [key[p] for p in map(tuple, xy[part])]
            for column in columns:
                weights = np.zeros(len(coords))
                weights[order] = maps[column][part]
                mass = {name: float(weights @ fraction) for name, fraction in fractions.items()}
                rows[column].append(
                    {
                        "slide_id": slide_id,
                        "record": record,
                        "deciding_value": value,
                        "diagnostic_region": region,
                        "mass_diagnostic": mass[region],
                        "auroc": patch_auroc(weights, fractions[region]),
                        "mass_other_region": sum(m for name, m in mass.items() if name != region),
                        "uniform_diagnostic": float(fractions[region].mean()),
                        **{f"mass_{name}": m for name, m in mass.items()},
                    }
                )
    return {column: pd.DataFrame(part) for column, part in rows.items()}


def _deciding_value(record: str, field: str, original: str) -> str:
    if record == ORIGINAL:
        return str(original)
    for edit in record.split(";"):
        name, _, value = edit.partition("=")
        if name == field:
            return value
    return str(original)
