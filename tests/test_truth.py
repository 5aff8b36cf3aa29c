"""Ground truth is cohort data read through one API (`persam_lib.cohort.truth`): masks, regions
table, deciding field, noise fields — checked on load, named however the cohort names them."""
from pathlib import Path

import numpy as np
import pytest

from persam_lib.cohort.demo import DIAGNOSTIC_REGION, _design_patients
from persam_lib.cohort.manifest import load_manifest
from persam_lib.cohort.truth import load_truth
from persam_lib.io.yaml_files import YamlFileError

ROOT = Path(__file__).resolve().parents[1]
# the demo's names -> names no code knows: a cohort that shares nothing with the demo but its pixels
RENAMES = (("extranodal", "organ"), ("nodal", "lymph"), ("site", "origin"), ("nodular", "alpha"), ("diffuse", "beta"))


def renamed_cohort_dir(cohort_dir: Path) -> Path:
    """Rewrite a copy of the tiny demo cohort's tables, manifest and truth with other field, value and region names."""
    for name in ("manifest.yaml", "clinical.csv", "truth/truth.yaml", "truth/regions.csv"):
        path = cohort_dir / name
        text = path.read_text()
        for old, new in RENAMES:
            text = text.replace(old, new)
        path.write_text(text)
    return cohort_dir


@pytest.fixture
def renamed(cohort_copy):
    return load_manifest(renamed_cohort_dir(cohort_copy) / "manifest.yaml")


def _design():
    from conftest import TINY

    return _design_patients(TINY, np.random.default_rng(TINY.seed)).set_index("slide_id")


def test_load_truth_reads_masks_regions_deciding_and_noise_fields(tiny_cohort):
    truth = load_truth(tiny_cohort)
    design = _design()
    assert truth.deciding_field == "site" and truth.noise_fields == ("age", "sex")
    assert truth.region_kinds == ["nodular", "diffuse"]  # mask-label order; glass and tissue are not region kinds
    assert truth.disagreeing() == design.index[design["disagree"]].tolist()  # the design's disagreeing slides, in table order
    assert truth.regions["disagree"].dtype == bool and len(truth.regions) == len(tiny_cohort.slides)
    records = tiny_cohort.records()
    for slide_id, row in design.iterrows():
        record = records.loc[row.patient_id]
        assert truth.diagnostic_region(record) == DIAGNOSTIC_REGION[record["site"]]
        assert truth.phenotype(slide_id, "nodular") == row.nodular_phenotype and truth.phenotype(slide_id, "diffuse") == row.diffuse_phenotype
        masks = truth.region_masks(slide_id)
        assert all(m.any() for m in masks.values()) and not (masks["nodular"] & masks["diffuse"]).any()
    agreement = truth.region_agreement().set_index("patient_id")["disagree"]
    assert agreement.to_dict() == design.set_index("patient_id")["disagree"].to_dict()


def test_patch_regions_name_each_patch_by_its_region_and_phenotype(tiny_cohort, tiny_features):
    from persam_lib.features.store import read_features

    truth = load_truth(tiny_cohort)
    slide_id = tiny_cohort.slides["slide_id"].iloc[0]
    data = read_features(tiny_features / f"{slide_id}.h5")
    names = truth.patch_regions(slide_id, data.coords, data.patch_size_level0)
    fractions = truth.region_fractions(slide_id, data.coords, data.patch_size_level0)
    nodular = f"nodular {truth.phenotype(slide_id, 'nodular')}"
    assert len(names) == len(data.coords)
    assert [n == nodular for n in names] == list(fractions["nodular"] >= 0.5)
    assert "other tissue" in names and nodular in names


def test_training_splits_its_metrics_by_region_agreement(tiny_run, tiny_cohort):
    truth = load_truth(tiny_cohort)
    metrics = tiny_run.metrics
    assert metrics["regions_disagree"]["n"] == len(truth.disagreeing())
    assert metrics["regions_agree"]["n"] + metrics["regions_disagree"]["n"] == len(tiny_cohort.clinical)


def test_a_cohort_named_unlike_the_demo_reads_the_same_way(renamed):
    truth = load_truth(renamed)
    assert truth.deciding_field == "origin" and truth.region_kinds == ["alpha", "beta"]
    assert truth.region_for("lymph") == "alpha" and truth.region_for("organ") == "beta"
    slide_id = renamed.slides["slide_id"].iloc[0]
    assert truth.phenotype(slide_id, "alpha") in {"A", "B"} and set(truth.region_masks(slide_id)) == {"alpha", "beta"}


def test_no_truth_key_no_ground_truth(cohort_copy):
    manifest = cohort_copy / "manifest.yaml"
    manifest.write_text("\n".join(line for line in manifest.read_text().splitlines() if not line.startswith("truth:")) + "\n")
    assert load_truth(load_manifest(manifest)) is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("deciding_field: site", "deciding_field: stage"), "'deciding_field' is 'stage', which is not a field of the cohort"),
        (lambda t: t.replace("- age", "- weight"), "'noise_fields' names ['weight']"),
        (lambda t: t.replace("nodal: nodular", "nodal: lymphoid"), "'diagnostic_region' names region(s) ['lymphoid'] that 'labels' does not give"),
        (lambda t: t.replace("regions: regions.csv", "regions: gone.csv"), "'regions' names"),
        (lambda t: t.replace("mask_downsample: 4", "mask_downsample: four"), "a value has the wrong type"),
        (lambda t: t.replace("deciding_field: site\n", ""), "the ground-truth file has no 'deciding_field'"),
    ],
)
def test_a_broken_truth_file_is_refused_on_load_naming_the_file(cohort_copy, edit, message):
    path = cohort_copy / "truth" / "truth.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(YamlFileError) as err:
        load_truth(load_manifest(cohort_copy / "manifest.yaml"))
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_missing_mask_names_its_file(tiny_cohort):
    truth = load_truth(tiny_cohort)
    with pytest.raises(FileNotFoundError, match=r"no ground-truth mask for 'S9999'"):
        truth.mask("S9999")


def test_nothing_outside_cohort_opens_the_truth_files_by_name():
    """Training, explain, plots, the book and the notebooks read ground truth through `load_truth`:
    none of them names the truth file, the regions table or the masks folder of a truth folder."""
    offenders = []
    sources = [p for p in (ROOT / "persam_lib").rglob("*.py") if "cohort" not in p.relative_to(ROOT / "persam_lib").parts]
    for path in [*sources, *(ROOT / "notebooks").glob("*.ipynb")]:
        text = path.read_text()
        for name in ("truth.yaml", "regions.csv", "truth_path", '"truth" / "masks"', "masks_dir"):
            if name in text:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_region_fractions_are_read_once_per_grid_and_equal_the_masks(tiny_cohort, tiny_features, monkeypatch):
    """Every model explained on a cohort scores its maps on the same patch grids: each sample's
    masks are read once per grid, and the kept fractions are those of the masks."""
    from persam_lib.features.store import feature_path, read_features
    from persam_lib.slides.patching import mask_fraction

    truth = load_truth(tiny_cohort)
    slide = tiny_cohort.slides["slide_id"].iloc[0]
    data = read_features(feature_path(tiny_features, slide))
    reads = []
    real_mask = type(truth).mask
    monkeypatch.setattr(type(truth), "mask", lambda self, s: (reads.append(s), real_mask(self, s))[1])
    first = truth.region_fractions(slide, data.coords, data.patch_size_level0)
    again = truth.region_fractions(slide, data.coords.copy(), data.patch_size_level0)
    assert reads == [slide] and again is first
    masks = {name: real_mask(truth, slide) == truth.labels[name] for name in truth.region_kinds}
    for name, inside in masks.items():
        np.testing.assert_array_equal(first[name], mask_fraction(inside, truth.mask_downsample, data.coords, data.patch_size_level0))
    truth.region_fractions(slide, data.coords[:3], data.patch_size_level0)  # another grid: computed for it
    assert reads == [slide, slide]
    with pytest.raises(ValueError):
        first[truth.region_kinds[0]][0] = 0.5  # shared between callers: read-only
