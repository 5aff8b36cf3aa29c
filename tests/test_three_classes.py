"""Three classes end to end: the demo cohort with subtypes A, B, C through validate, extract, every
slide model, metrics and explain (the published PersAM's task is three-class)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from persam_lib.cohort.demo import DemoConfig, make_demo_cohort
from persam_lib.cohort.manifest import load_manifest
from persam_lib.cohort.truth import load_truth
from persam_lib.explain.attention import ExplainConfig, explain_run
from persam_lib.features.extract import extract
from persam_lib.models import available_models
from persam_lib.train.loop import TrainConfig
from persam_lib.train.run import Run, compare_models

PERSAM = str(Path(sys.executable).parent / "persam")
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # tiny folds: a bootstrap sample may lack a class
THREE = DemoConfig(patients=12, seed=5, width=1536, height=1152, region_radius=230, subtypes=3)


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    out = tmp_path_factory.mktemp("three")
    manifest = make_demo_cohort(out / "cohort", THREE, progress=False)
    cohort = load_manifest(manifest)
    assert not extract(cohort, out / "features", progress=False).failed
    return out, cohort


def test_the_cohort_has_three_classes_and_the_record_still_decides(three_class):
    _, cohort = three_class
    assert list(cohort.schema.label.classes) == ["A", "B", "C"]
    assert sorted(cohort.clinical["subtype"].value_counts().tolist()) == [4, 4, 4]
    truth = load_truth(cohort)
    regions = truth.regions.set_index("patient_id")
    for pid, row in cohort.clinical.iterrows():  # the region the record names carries the label
        region = truth.diagnostic_region({"site": row["site"]})
        assert regions.loc[pid, f"{region}_phenotype"] == row["subtype"]
    assert regions["disagree"].any()  # somewhere only the record tells which region counts
    result = subprocess.run([PERSAM, "validate", str(cohort.manifest_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow  # every slide model trained: `make test-slow`, and CI
def test_every_slide_model_trains_and_reports_three_class_metrics(three_class, tmp_path):
    out, cohort = three_class
    models = available_models("features")
    base = TrainConfig.of(n_folds=2, epochs=2, patience=2, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1)
    table = compare_models(cohort, out / "features", tmp_path / "runs", models, base, progress=False)
    assert list(table["model"]) == models
    for name in models:
        metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["overall"]
        assert set(metrics["f1"]) == {"A", "B", "C"}, name
        matrix = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
        assert matrix.shape == (3, 3) and matrix.sum() == 12 and (matrix.sum(1) == 4).all(), name
        assert metrics["auroc"] is None or 0 <= metrics["auroc"] <= 1, name
        predictions = Run(tmp_path / "runs" / name).predictions
        assert {"prob_A", "prob_B", "prob_C"} <= set(predictions.columns)
        np.testing.assert_allclose(predictions[["prob_A", "prob_B", "prob_C"]].sum(axis=1), 1, atol=1e-5)
    paper = Run(tmp_path / "runs" / "persam_paper")
    explanation = explain_run(paper, cohort, out / "features", [], ExplainConfig(per_class=True), progress=False)
    assert {"attention_class_A", "attention_class_B", "attention_class_C"} <= set(explanation.attention.columns)


def test_radiographs_have_two_findings_only(tmp_path):
    result = subprocess.run([PERSAM, "demo-cohort", str(tmp_path / "r"), "--kind", "radiograph", "--subtypes", "3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--subtypes applies to slide cohorts" in result.stderr


def test_the_validation_split_holds_every_class_when_it_can():
    import pandas as pd

    from persam_lib.train.folds import split_validation

    labels = pd.Series(list("AABBCC"), index=[f"P{i}" for i in range(6)])
    train, val = split_validation(labels, 0.25, seed=0)
    assert sorted(labels[val]) == ["A", "B", "C"] and sorted(labels[train]) == ["A", "B", "C"]
    two = pd.Series(list("AABBAABB"), index=[f"P{i}" for i in range(8)])
    assert len(split_validation(two, 0.25, seed=0)[1]) == 2  # two classes: as before
