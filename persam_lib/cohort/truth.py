"""Ground truth of a cohort: where its diagnostic regions are, and which one the label depends on
under each clinical record.

A cohort ships ground truth as a ``truth.yaml`` (named by the manifest's optional ``truth`` key)
with these keys:

- ``masks``: folder (relative to the YAML) of one label mask ``<slide_id>.png`` per sample;
- ``mask_downsample``: the masks' downsample from the sample's level-0 pixels;
- ``labels``: region name -> its value in the masks (background, tissue or body labels may be
  among them; the *region kinds* are the regions some record makes diagnostic);
- ``deciding_field``: the categorical clinical field that decides which region is diagnostic;
- ``diagnostic_region``: value of the deciding field -> region name;
- ``noise_fields`` (optional): fields known to carry no information (a null for attention shift);
- ``regions`` (optional): a CSV, one row per sample, with ``slide_id`` and ``patient_id``, a
  ``<region>_phenotype`` column per region kind and ``disagree`` (true where the region kinds
  show different phenotypes, so only the record tells which one the label follows).

This module is the only one that opens those files: training, explain, plots and the book read
ground truth through `load_truth` and `GroundTruth`. The demo cohorts write one
(with `write_truth`); any cohort with region masks can.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from persam_lib.cohort.manifest import Cohort
from persam_lib.io.atomic import write_text_atomic
from persam_lib.io.yaml_files import YamlFileError, load_yaml
from persam_lib.slides.patching import mask_fraction

TRUTH_KEYS = ("masks", "mask_downsample", "labels", "deciding_field", "diagnostic_region")
OPTIONAL_TRUTH_KEYS = ("noise_fields", "regions")
TRUTH_FILE = "truth.yaml"  # what `write_truth` names the files of a truth folder
REGIONS_FILE = "regions.csv"
MASKS_DIR = "masks"
OUTSIDE_REGIONS = "other tissue"  # what `GroundTruth.patch_regions` calls a patch in no region kind
_HINT = f"Give the keys {list(TRUTH_KEYS)} and optionally {list(OPTIONAL_TRUTH_KEYS)} (see persam_lib.cohort.truth)."


@dataclass(frozen=True)
class GroundTruth:
    """Where the diagnostic regions are, and which one the label depends on under each record."""

    masks_dir: Path
    mask_downsample: float
    labels: dict[str, int]  # region name -> value in the mask
    deciding_field: str
    region_by_value: dict[str, str]  # value of the deciding field -> region name
    noise_fields: tuple[str, ...] = ()  # fields known to carry no information (a null for attention shift)
    regions: pd.DataFrame | None = field(default=None, compare=False, repr=False)  # one row per sample (see the module docstring)
    # each sample's region fractions by patch grid, computed once: every model explained on the
    # cohort scores its maps on the same grids (`region_fractions`)
    _fractions: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def mask(self, slide_id: str) -> np.ndarray:
        """The label mask (H, W) of one slide or image, at ``mask_downsample``."""
        path = self.masks_dir / f"{slide_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no ground-truth mask for '{slide_id}'; the truth file's 'masks' folder needs one <slide_id>.png per sample")
        return np.asarray(Image.open(path))

    def region_for(self, deciding_value: object) -> str:
        """The region that is diagnostic when the deciding field has ``deciding_value``."""
        return self.region_by_value[str(deciding_value)]

    def diagnostic_region(self, record: Mapping[str, object]) -> str:
        """The region that is diagnostic under a clinical ``record`` (field -> value)."""
        return self.region_for(record[self.deciding_field])

    @property
    def region_kinds(self) -> list[str]:
        """The region kinds that can be diagnostic (the lesions), in mask-label order; background,
        tissue or body labels are not among them."""
        kinds = set(self.region_by_value.values())
        return [name for name in self.labels if name in kinds]

    def region_masks(self, slide_id: str) -> dict[str, np.ndarray]:
        """A boolean mask per region kind of one slide or image."""
        mask = self.mask(slide_id)
        return {name: mask == self.labels[name] for name in self.region_kinds}

    def region_fractions(self, slide_id: str, coords: np.ndarray, patch_size: int) -> dict[str, np.ndarray]:
        """For each region kind, the fraction (N,) of every patch (level-0 top-left ``coords`` (N, 2),
        side ``patch_size``) that lies inside it. Kept per sample and grid, so the masks are read
        once however many models are scored (the arrays are shared: do not write to them)."""
        coords = np.ascontiguousarray(coords)
        key = (str(slide_id), patch_size, coords.dtype.str, coords.shape, coords.tobytes())
        if key not in self._fractions:
            fractions = {name: mask_fraction(inside, self.mask_downsample, coords, patch_size) for name, inside in self.region_masks(slide_id).items()}
            for array in fractions.values():
                array.flags.writeable = False
            self._fractions[key] = fractions
        return self._fractions[key]

    def patch_regions(self, slide_id: str, coords: np.ndarray, patch_size: int, outside: str = OUTSIDE_REGIONS) -> list[str]:
        """Per patch, the region kind it lies in (at least half of it), followed by the sample's
        phenotype of that region when the regions table gives one ("nodular A"); ``outside`` for
        patches in no region kind."""
        fractions = self.region_fractions(slide_id, coords, patch_size)
        shown = {name: name if self.phenotype(slide_id, name) is None else f"{name} {self.phenotype(slide_id, name)}" for name in fractions}
        names = []
        for i in range(len(coords)):
            inside = [name for name, fraction in fractions.items() if fraction[i] >= 0.5]
            names.append(shown[inside[0]] if inside else outside)
        return names

    def phenotype(self, slide_id: str, region: str) -> str | None:
        """The phenotype the regions table gives ``region`` on ``slide_id`` (None without one)."""
        column = f"{region}_phenotype"
        if self.regions is None or column not in self.regions:
            return None
        rows = self.regions[self.regions["slide_id"] == str(slide_id)]
        return None if rows.empty or pd.isna(rows[column].iloc[0]) else str(rows[column].iloc[0])

    def disagreeing(self) -> list[str]:
        """The samples whose region kinds disagree (there only the record decides the label), in
        the regions table's order; empty without a regions table or its ``disagree`` column."""
        if self.regions is None or "disagree" not in self.regions:
            return []
        return self.regions.loc[self.regions["disagree"], "slide_id"].tolist()

    def region_agreement(self) -> pd.DataFrame | None:
        """``patient_id`` and ``disagree`` (bool) per sample, to split metrics by whether the
        regions agree; None without a regions table or its ``disagree`` column."""
        if self.regions is None or not {"patient_id", "disagree"} <= set(self.regions):
            return None
        return self.regions[["patient_id", "disagree"]]


def load_truth(cohort: Cohort) -> GroundTruth | None:
    """The cohort's ground truth, or None when its manifest names none.

    Every key is checked here (types, the deciding and noise fields against the cohort's fields,
    region names against the mask labels, the regions table's columns), so a problem names the
    truth file before any long work starts."""
    if cohort.truth_path is None:
        return None
    path = cohort.truth_path
    raw = load_yaml(path, "ground-truth file")
    if not isinstance(raw, dict):
        raise YamlFileError(path, "a ground-truth file is a mapping", _HINT)
    missing = [key for key in TRUTH_KEYS if key not in raw]
    if missing:
        raise YamlFileError(path, f"the ground-truth file has no {', '.join(repr(k) for k in missing)}", _HINT)
    try:
        truth = GroundTruth(
            masks_dir=path.parent / str(raw["masks"]),
            mask_downsample=float(raw["mask_downsample"]),
            labels={str(k): int(v) for k, v in dict(raw["labels"]).items()},
            deciding_field=str(raw["deciding_field"]),
            region_by_value={str(k): str(v) for k, v in dict(raw["diagnostic_region"]).items()},
            noise_fields=tuple(str(f) for f in raw.get("noise_fields") or ()),
        )
    except (TypeError, ValueError) as err:
        raise YamlFileError(path, f"a value has the wrong type ({err})", "'mask_downsample' is a number, 'labels' maps region names to mask values (ints), 'diagnostic_region' maps values to region names.") from None
    _check_against_cohort(path, truth, cohort)
    return replace(truth, regions=_read_regions(path, raw["regions"])) if raw.get("regions") else truth


def _read_regions(truth_path: Path, name: object) -> pd.DataFrame:
    """The regions table named by the truth file: ids as text, ``disagree`` as bool."""
    path = truth_path.parent / str(name)
    if not path.is_file():
        raise YamlFileError(truth_path, f"'regions' names {path}, which is not a file", "Fix the 'regions' path (relative to the truth file's folder), or remove the key.")
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "slide_id": str})
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        raise YamlFileError(truth_path, f"the regions table {path} could not be read as CSV ({str(err).splitlines()[0]})", "Write it as a comma-separated UTF-8 table with a header row.") from None
    if "slide_id" not in table:
        raise YamlFileError(truth_path, f"the regions table {path} has no 'slide_id' column (it has {list(table.columns)})", "Give one row per sample with 'slide_id', 'patient_id', a '<region>_phenotype' column per region and 'disagree'.")
    if "disagree" in table:
        table["disagree"] = table["disagree"].astype(str).str.lower() == "true"
    return table


def _check_against_cohort(path: Path, truth: GroundTruth, cohort: Cohort) -> None:
    fields = cohort.schema.names
    if truth.deciding_field not in fields:
        raise YamlFileError(path, f"'deciding_field' is {truth.deciding_field!r}, which is not a field of the cohort", f"Name one of the cohort's fields: {fields}.")
    unknown_noise = [f for f in truth.noise_fields if f not in fields]
    if unknown_noise:
        raise YamlFileError(path, f"'noise_fields' names {unknown_noise}, which are not fields of the cohort", f"Name fields of the cohort: {fields}.")
    unknown_regions = sorted(set(truth.region_by_value.values()) - set(truth.labels))
    if unknown_regions:
        raise YamlFileError(path, f"'diagnostic_region' names region(s) {unknown_regions} that 'labels' does not give", f"Use the region names of 'labels': {list(truth.labels)}.")


def mask_file(truth_dir: str | Path, slide_id: str) -> Path:
    """Where one sample's label mask goes in a truth folder that `write_truth` describes."""
    return Path(truth_dir) / MASKS_DIR / f"{slide_id}.png"


def write_truth(
    truth_dir: str | Path, regions: pd.DataFrame, *, mask_downsample: float, labels: dict[str, int], deciding_field: str, diagnostic_region: dict[str, str], noise_fields: tuple[str, ...] = ()
) -> Path:
    """A truth folder's regions table (``regions.csv``) and ``truth.yaml`` (the masks, in
    `mask_file`, are written by whoever renders the samples), each atomically; returns the YAML's path."""
    truth_dir = Path(truth_dir)
    write_text_atomic(truth_dir / REGIONS_FILE, regions.to_csv(index=False))
    truth = {
        "masks": MASKS_DIR,
        "mask_downsample": mask_downsample,
        "labels": labels,
        "deciding_field": deciding_field,
        "diagnostic_region": diagnostic_region,
        "noise_fields": list(noise_fields),
        "regions": REGIONS_FILE,
    }
    return write_text_atomic(truth_dir / TRUTH_FILE, yaml.safe_dump(truth, sort_keys=False))
