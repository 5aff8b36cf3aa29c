"""The new patients chapter's parts, on the tiny run and a cohort of "new" patients (the tiny
cohort's slides under other patient ids; the whole chapter runs in the CI book)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from persam_lib.book.chapter import setup_chapter
from persam_lib.book.new_patients import (calibration_check, commands, export_for_review, external_validation, load_new_patients, new_patient_results,
                                          prediction_table, reliability_figure, withheld_labels)
from persam_lib.cohort.manifest import load_manifest
from persam_lib.predict.calibration import calibrate_run
from persam_lib.predict.ensemble import predict_cohort


@pytest.fixture
def new(tiny_cohort, tiny_features, cohort_copy, tmp_path):
    for name in ("clinical.csv", "slides.csv"):
        path = cohort_copy / name
        path.write_text(path.read_text().replace("P0", "N0"))  # patients the run never saw
    chapter = setup_chapter(tmp_path / "work", "", tiny_cohort.manifest_path, tiny_features)
    return load_new_patients(chapter, cohort_copy / "manifest.yaml", tiny_features)


def test_the_labels_are_withheld_in_a_copy_in_the_work_folder(cohort_copy, tmp_path):
    cohort = load_manifest(cohort_copy / "manifest.yaml")
    before = sorted(p.name for p in cohort_copy.iterdir())
    copy = withheld_labels(cohort, tmp_path / "work" / "unlabelled")
    assert copy.name == "manifest.unlabelled.yaml" and copy.parent == tmp_path / "work" / "unlabelled"
    unlabelled = load_manifest(copy)
    assert unlabelled.labelling == "unlabelled" and list(unlabelled.clinical.index) == list(cohort.clinical.index)
    assert unlabelled.schema.names == cohort.schema.names and list(unlabelled.slides["path"]) == list(cohort.slides["path"])
    assert cohort.schema.label.column not in pd.read_csv(copy.parent / yaml.safe_load(copy.read_text())["clinical"]).columns
    assert sorted(p.name for p in cohort_copy.iterdir()) == before  # nothing written beside the user's files


def test_a_partly_labelled_cohort_is_scored_and_calibrated_on_its_labelled_patients(tiny_run, new, tmp_path):
    table = pd.read_csv(new.cohort.manifest_path.parent / "clinical.csv", dtype=str, keep_default_na=False)
    table.loc[[0, 1], new.cohort.schema.label.column] = ""
    table.to_csv(new.cohort.manifest_path.parent / "clinical.csv", index=False)
    chapter = setup_chapter(tmp_path / "w2", "", tiny_run.inputs["manifest"], new.features_dir)
    partly = load_new_patients(chapter, new.cohort.manifest_path, new.features_dir)
    assert partly.cohort.labelling == "partly labelled"
    predictions = predict_cohort(tiny_run, partly.unlabelled, partly.features_dir)
    check = calibration_check(tiny_run, predictions, partly)
    assert check.table.loc[("new patients", "before"), "n"] == 6  # the two without a label are predicted, not scored
    assert list(external_validation(tiny_run, predictions, partly)["n"]) == [8, 6]


def test_new_patients_are_predicted_unlabelled_then_scored_and_calibrated(tiny_run, new):
    assert new.labelled and new.unlabelled.labelling == "unlabelled" and "withheld" in new.line.data
    predictions = predict_cohort(tiny_run, new.unlabelled, new.features_dir)
    shown = prediction_table(new, predictions, rows=3)
    assert len(shown) == 3 and {"prob_A", "prob_B", "y_pred", "fold_spread"} <= set(shown.columns)
    validation = external_validation(tiny_run, predictions, new)
    assert list(validation.index) == ["training cohort, out of fold", "new patients"] and list(validation["n"]) == [8, 8]
    assert validation.iloc[1, 1].count("[") == 1  # "0.750 [0.500, 1.000]"

    check = calibration_check(tiny_run, predictions, new)
    assert check.fitted.temperature == pytest.approx(calibrate_run(tiny_run, store=False).temperature)
    assert not (tiny_run.path / "calibration.json").exists()  # the book measures; `persam calibrate` stores
    assert len(check.table) == 4 and set(check.curves) == {"training cohort, out of fold", "new patients"}
    assert len(reliability_figure(check).axes) == 2


def test_export_for_review_writes_both_formats_for_a_slide(tiny_run, new, tmp_path):
    slide = new.cohort.slides["slide_id"].iloc[0]
    table = export_for_review(tiny_run, new, [slide], tmp_path / "review").reset_index()
    name = new.chapter.names.slide(slide)
    geo = table[table["format"] == "geojson"]
    assert list(geo["file"]) == [f"{name}.geojson"]
    features = json.loads((tmp_path / "review" / "geojson" / f"{name}.geojson").read_text())["features"]
    assert int(geo["tiles"].iloc[0]) == len(features) > 0
    tiffs = table[table["format"] == "tiff"]
    assert len(tiffs) == int(geo["measurements"].iloc[0]) > 1 and (tiffs["tiles"] == "").all()  # one overlay per record, as many as the GeoJSON's measurements
    assert tiffs["file"].str.startswith(f"{name}/").all() and (tiffs["kB"] > 0).all()


def test_the_commands_and_results_show_no_machine_path(tiny_run, new, tmp_path):
    text = commands(tiny_run, new).data
    assert "persam predict" in text and "persam export" in text and "--format tiff" in text
    assert str(tmp_path) not in text and "/tmp/" not in text
    from persam_lib.book.sections import explain_models

    predictions = predict_cohort(tiny_run, new.unlabelled, new.features_dir)
    _, reports = explain_models(new.chapter, {"persam": tiny_run}, new.features_dir)
    results = new_patient_results(tiny_run, predictions, new, calibration_check(tiny_run, predictions, new), reports["persam"])
    assert {"external_balanced_accuracy", "external_auroc", "external_ece_before", "external_ece_after", "temperature", "external_mass_diagnostic"} <= set(results)
    assert all(np.isfinite(v) for v in results.values())
