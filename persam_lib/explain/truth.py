"""Ground truth for attention: which region is diagnostic under a given record, and how much
attention falls on it.

A cohort ships ground truth as a ``truth.yaml`` (named by the manifest's optional ``truth``
key) pointing at per-slide label masks, the label value of each region kind, the categorical
field that decides which region is diagnostic, and the mapping from that field's values to
regions. The demo cohort writes one; any cohort with region masks can.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import rankdata

from persam_lib.cohort.manifest import Cohort
from persam_lib.explain.records import ORIGINAL
from persam_lib.io.yaml_files import YamlFileError, load_yaml
from persam_lib.slides.patching import mask_fraction


TRUTH_KEYS = ("masks", "mask_downsample", "labels", "deciding_field", "diagnostic_region")


@dataclass(frozen=True)
class GroundTruth:
    """Where the diagnostic regions are, and which one the label depends on under each record."""

    masks_dir: Path
    mask_downsample: float
    labels: dict[str, int]  # region name -> value in the mask
    deciding_field: str
    diagnostic_region: dict[str, str]  # value of the deciding field -> region name
    noise_fields: tuple[str, ...] = ()  # fields known to carry no information (a null for attention shift)

    def mask(self, slide_id: str) -> np.ndarray:
        return np.asarray(Image.open(self.masks_dir / f"{slide_id}.png"))

    def region_for(self, deciding_value: str) -> str:
        return self.diagnostic_region[str(deciding_value)]

    @property
    def region_kinds(self) -> list[str]:
        """The region kinds that can be diagnostic (the lesions), in mask-label order; background,
        tissue or body labels are not among them."""
        kinds = set(self.diagnostic_region.values())
        return [name for name in self.labels if name in kinds]

    def region_masks(self, slide_id: str) -> dict[str, np.ndarray]:
        """A boolean mask per region kind of one slide or image."""
        mask = self.mask(slide_id)
        return {name: mask == self.labels[name] for name in self.region_kinds}


def load_truth(cohort: Cohort) -> GroundTruth | None:
    """The cohort's ground truth, or None when its manifest names none."""
    if cohort.truth_path is None:
        return None
    path = cohort.truth_path
    raw = load_yaml(path, "ground-truth file")
    if not isinstance(raw, dict):
        raise YamlFileError(path, "a ground-truth file is a mapping", f"Give the keys {list(TRUTH_KEYS)} (see persam_lib.explain.truth).")
    missing = [key for key in TRUTH_KEYS if key not in raw]
    if missing:
        raise YamlFileError(path, f"the ground-truth file has no {', '.join(repr(k) for k in missing)}", f"Give the keys {list(TRUTH_KEYS)} (see persam_lib.explain.truth).")
    try:
        return GroundTruth(
            masks_dir=path.parent / str(raw["masks"]),
            mask_downsample=float(raw["mask_downsample"]),
            labels={str(k): int(v) for k, v in dict(raw["labels"]).items()},
            deciding_field=str(raw["deciding_field"]),
            diagnostic_region={str(k): str(v) for k, v in dict(raw["diagnostic_region"]).items()},
            noise_fields=tuple(str(f) for f in raw.get("noise_fields") or ()),
        )
    except (TypeError, ValueError) as err:
        raise YamlFileError(path, f"a value has the wrong type ({err})", "'mask_downsample' is a number, 'labels' maps region names to mask values (ints), 'diagnostic_region' maps values to region names.") from None


def region_fractions(truth: GroundTruth, slide_id: str, coords: np.ndarray, patch_size: int) -> dict[str, np.ndarray]:
    """For each region kind that can be diagnostic (a value of ``diagnostic_region``), the fraction
    of every patch that lies inside it; background, tissue or body labels are not region kinds."""
    return {name: mask_fraction(inside, truth.mask_downsample, coords, patch_size) for name, inside in truth.region_masks(slide_id).items()}


def patch_auroc(attention: np.ndarray, inside: np.ndarray) -> float:
    """AUROC of attention as a score for "this patch lies in the region" (fraction >= 0.5); NaN when
    all patches are on one side. 0.5 = attention says nothing about the region; ties count half."""
    positive = np.asarray(inside) >= 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(attention)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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
    for slide_id, slide in attention.groupby("slide_id", sort=False):
        original_value = records.loc[patients[slide_id], truth.deciding_field]
        first = slide[slide["record"] == slide["record"].iloc[0]]
        coords = first[["x", "y"]].to_numpy()
        fractions = region_fractions(truth, slide_id, coords, int(first["size"].iloc[0]))
        key = {xy: i for i, xy in enumerate(map(tuple, coords))}
        for record, part in slide.groupby("record", sort=False):
            value = _deciding_value(record, truth.deciding_field, original_value)
            region = truth.region_for(value)
            order = [key[xy] for xy in map(tuple, part[["x", "y"]].to_numpy())]
            for column in columns:
                weights = np.zeros(len(coords))
                weights[order] = part[column].to_numpy()
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
