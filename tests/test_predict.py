"""New patients: the fold ensemble's predictions, the checks before scoring, calibration."""
import json

import numpy as np
import pandas as pd
import pytest

from persam_lib.cli import main
from persam_lib.cohort.manifest import load_manifest
from persam_lib.predict.calibration import brier_score, calibrate_run, expected_calibration_error, fit_temperature, reliability, scaled, stored_temperature
from persam_lib.predict.ensemble import PredictionInputError, by_patient, predict_cohort, score
from persam_lib.train.run import Run


def _unlabel(cohort_dir):
    path = cohort_dir / "clinical.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=["subtype"])
    table.to_csv(path, index=False)
    return cohort_dir / "manifest.yaml"


def test_the_ensemble_is_the_mean_of_the_fold_models(tiny_run, tiny_cohort, tiny_features):
    both = predict_cohort(tiny_run, tiny_cohort, tiny_features)
    first, second = (predict_cohort(tiny_run, tiny_cohort, tiny_features, fold=k) for k in (0, 1))
    cols = [f"prob_{c}" for c in tiny_run.classes]
    np.testing.assert_allclose(both.table[cols].to_numpy(), (first.table[cols].to_numpy() + second.table[cols].to_numpy()) / 2, atol=1e-6)
    np.testing.assert_allclose(both.table[cols].sum(axis=1), 1.0, atol=1e-5)
    spread = np.abs(first.table[cols].to_numpy() - second.table[cols].to_numpy())
    best = both.table[cols].to_numpy().argmax(1)
    np.testing.assert_allclose(both.table["fold_spread"], spread[np.arange(len(best)), best], atol=1e-6)
    assert set(both.table["folds"]) == {"0,1"} and set(first.table["folds"]) == {"0"}
    metrics = score(both, tiny_cohort)
    assert metrics["n"] == 8 and 0 <= metrics["balanced_accuracy"] <= 1  # labelled: scored like training


def test_predict_on_an_unlabelled_cohort_writes_a_table_and_no_metrics(tiny_run, tiny_features, cohort_copy, tmp_path, capsys):
    manifest = _unlabel(cohort_copy)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tiny_run.path), "--manifest", str(manifest), "--features", str(tiny_features), "--out", str(out), "--metrics", str(tmp_path / "m.json")]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["patient_id", *(f"prob_{c}" for c in tiny_run.classes), "fold_spread", "y_pred"] and len(table) == 8
    captured = capsys.readouterr()
    assert "8 patient(s) of demo scored by the mean of 2 fold models" in captured.out and "unlabelled" in captured.err
    assert not (tmp_path / "m.json").exists()
    assert score(predict_cohort(tiny_run, load_manifest(manifest), tiny_features), load_manifest(manifest)) is None


def test_a_category_the_run_never_saw_is_an_error_naming_it(tiny_run, tiny_features, cohort_copy, tmp_path, capsys):
    manifest = cohort_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("    - F\n    - M\n", "    - F\n    - M\n    - X\n", 1))
    clinical = pd.read_csv(cohort_copy / "clinical.csv", dtype=str, keep_default_na=False)
    clinical.loc[0, "sex"] = "X"
    clinical.to_csv(cohort_copy / "clinical.csv", index=False)
    assert main(["predict", str(tiny_run.path), "--manifest", str(manifest), "--features", str(tiny_features), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "field 'sex': the value 'X'" in err and "not one the run was trained on" in err and not (tmp_path / "p.csv").exists()


def test_features_made_otherwise_are_refused(tiny_run, tiny_cohort, tmp_path):
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.extract import extract
    from persam_lib.slides.patching import PatchConfig

    other = tmp_path / "other"
    extract(tiny_cohort, other, ExtractConfig(patch=PatchConfig(patch_size=128)), progress=False)
    with pytest.raises(PredictionInputError, match="other settings than the run's .*patch_size"):
        predict_cohort(tiny_run, tiny_cohort, other)


def test_calibration_measures_fits_and_is_applied_by_predict(tiny_run, tiny_cohort, tiny_features, tmp_path):
    y = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    assert brier_score(y, probs) == pytest.approx(np.mean([0.02, 0.08, 0.72, 0.18, 0.02]))
    table = reliability(y, probs, bins=2)
    assert list(table["n"]) == [5] and table.loc[0, "accuracy"] == pytest.approx(0.8)  # every confidence >= 0.5; 4 of 5 right
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    overconfident = np.array([[0.99, 0.01]] * 6 + [[0.01, 0.99]] * 4)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])  # 80% right, 99% sure
    t = fit_temperature(labels, overconfident)
    assert t > 1.5 and expected_calibration_error(labels, scaled(overconfident, t)) < expected_calibration_error(labels, overconfident)
    np.testing.assert_array_equal(scaled(overconfident, t).argmax(1), overconfident.argmax(1))  # no prediction changes

    import shutil

    shutil.copytree(tiny_run.path, tmp_path / "run")
    run = Run(tmp_path / "run")
    result = calibrate_run(run)
    assert stored_temperature(run) == pytest.approx(result.temperature) and json.loads((run.path / "calibration.json").read_text())["patients"] == 8
    plain = predict_cohort(run, tiny_cohort, tiny_features)
    hot = predict_cohort(run, tiny_cohort, tiny_features, temperature=result.temperature)
    cols = [f"prob_{c}" for c in run.classes]
    assert (plain.table["y_pred"] == hot.table["y_pred"]).all()
    if abs(result.temperature - 1) > 1e-3:
        assert not np.allclose(plain.table[cols], hot.table[cols])
    assert main(["calibrate", str(run.path), "--dry-run"]) == 0


def test_by_patient_averages_a_patients_samples():
    from persam_lib.predict.ensemble import Predictions

    table = pd.DataFrame({"slide_id": ["a", "b", "c"], "patient_id": ["P1", "P1", "P2"], "prob_A": [0.2, 0.6, 0.9], "prob_B": [0.8, 0.4, 0.1], "fold_spread": [0.1, 0.3, 0.0], "y_pred": ["B", "A", "A"], "folds": "0,1"})
    patients = by_patient(Predictions(table, ["A", "B"]))
    assert list(patients["patient_id"]) == ["P1", "P2"] and patients.loc[0, "prob_A"] == pytest.approx(0.4) and patients.loc[0, "y_pred"] == "B"
    assert patients.loc[0, "fold_spread"] == pytest.approx(0.3)


def test_explain_on_new_patients_uses_the_ensemble_never_fold_0_alone(tiny_run, tiny_features, cohort_copy, tmp_path):
    """Patients the run never saw (renamed, unlabelled) are explained by the mean of the fold models."""
    from persam_lib.explain.attention import ExplainConfig, explain_run

    for name in ("clinical.csv", "slides.csv"):
        path = cohort_copy / name
        path.write_text(path.read_text().replace("P0", "N0"))  # new patient ids: not in the run's folds
    manifest = _unlabel(cohort_copy)
    cohort = load_manifest(manifest)
    new = explain_run(tiny_run, cohort, tiny_features, progress=False)
    assert set(new.predictions["fold"]) == {"0,1"}  # both fold models
    one = {k: explain_run(tiny_run, cohort, tiny_features, config=ExplainConfig(fold=k), progress=False) for k in (0, 1)}
    assert set(one[0].predictions["fold"]) == {"0"}
    np.testing.assert_allclose(new.attention["attention"], (one[0].attention["attention"] + one[1].attention["attention"]) / 2, atol=1e-6)
    assert not np.allclose(new.attention["attention"], one[0].attention["attention"])
    sums = new.attention.groupby(["slide_id", "record"])["attention"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="no finished fold 7"):
        explain_run(tiny_run, cohort, tiny_features, config=ExplainConfig(fold=7), progress=False)


def test_a_new_cohort_that_reuses_the_runs_patient_ids_is_still_explained_by_the_ensemble(tiny_run, tiny_cohort, tiny_features, cohort_copy):
    """Another hospital's "P0001" is not the run's P0001: only the run's own cohort (its manifest)
    has patients that the one model which did not train on them explains."""
    from persam_lib.explain.attention import explain_run, is_run_cohort

    other = load_manifest(_unlabel(cohort_copy))  # the same ids, in another cohort's manifest
    assert set(other.clinical.index) == set(tiny_cohort.clinical.index)
    assert is_run_cohort(tiny_run, tiny_cohort) and not is_run_cohort(tiny_run, other)
    with pytest.warns(UserWarning, match="not the manifest .* 8 of its patient ids are the run's"):
        assert set(explain_run(tiny_run, other, tiny_features, progress=False).predictions["fold"]) == {"0,1"}
    own = explain_run(tiny_run, tiny_cohort, tiny_features, progress=False).predictions
    assert set(own["fold"]) == {"0", "1"} and own.groupby("patient_id")["fold"].nunique().eq(1).all()


def test_a_final_model_on_every_patient_for_the_median_best_epoch(tiny_cohort, tiny_features, tmp_path, capsys):
    from persam_lib.train.final import best_epochs

    out = tmp_path / "run"
    args = ["--folds", "2", "--epochs", "3", "--set", "d_model=8", "--set", "n_heads=2", "--set", "n_layers=1", "--set", "val_fraction=0.25", "--set", "patience=3"]
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--out", str(out), "--final", *args]) == 0
    run = Run(out)
    record = json.loads((out / "final" / "final.json").read_text())
    assert record["patients"] == 8 and record["epochs"] == int(np.median(best_epochs(run))) and len(pd.read_csv(out / "final" / "history.csv")) == record["epochs"]
    assert run.has_final and run.final_model().config.d_model == 8
    final = predict_cohort(run, tiny_cohort, tiny_features, final=True)
    assert set(final.table["folds"]) == {"final"} and (final.table["fold_spread"] == 0).all()
    assert main(["predict", str(out), "--manifest", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "final", "--out", str(tmp_path / "p.csv")]) == 0
    assert "the final model (every patient)" in capsys.readouterr().out
    assert not Run(tiny_cohort_run_without_final(tmp_path, out)).has_final


def tiny_cohort_run_without_final(tmp_path, out):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "final" / "final.json").unlink()  # an interrupted final fit is not a final model
    return copy


def test_the_calibration_error_is_the_reliability_tables_weighted_gap():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 200)
    y = rng.integers(0, 3, 200)
    table = reliability(y, probs)
    assert expected_calibration_error(y, probs) == pytest.approx(float((table["n"] / 200 * (table["accuracy"] - table["confidence"]).abs()).sum()), abs=1e-12)


def test_train_predict_explain_export_on_an_unlabelled_cohort_from_the_cli(tiny_cohort, tiny_features, cohort_copy, tmp_path, capsys):
    """The path a user takes with new patients, command by command."""
    run = tmp_path / "run"
    small = ["--folds", "2", "--epochs", "2", "--set", "d_model=8", "--set", "n_heads=2", "--set", "n_layers=1", "--set", "val_fraction=0.25"]
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--out", str(run), *small]) == 0
    for name in ("clinical.csv", "slides.csv"):
        path = cohort_copy / name
        path.write_text(path.read_text().replace("P0", "N0"))
    new = _unlabel(cohort_copy)
    assert main(["predict", str(run), "--manifest", str(new), "--features", str(tiny_features), "--out", str(tmp_path / "p.csv")]) == 0
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) == 8 and predictions["patient_id"].str.startswith("N0").all()
    assert main(["explain", str(run), "--manifest", str(new), "--features", str(tiny_features), "--out", str(tmp_path / "a.parquet")]) == 0
    attention = pd.read_parquet(tmp_path / "a.parquet")
    assert attention["slide_id"].nunique() == 8 and attention["record"].nunique() > 1
    assert main(["export", str(run), "--manifest", str(new), "--features", str(tiny_features), "--format", "geojson", "--out", str(tmp_path / "qupath"), "--pseudonyms"]) == 0
    files = sorted((tmp_path / "qupath").glob("*.geojson"))
    assert len(files) == 8 and json.loads(files[0].read_text())["type"] == "FeatureCollection"
    assert "export: 8 geojson file(s) for 8 slide(s)" in capsys.readouterr().out
