"""A cohort of new patients: no label column, or empty labels. validate says so; train refuses."""
import pandas as pd
import pytest

from persam_lib.cli import main
from persam_lib.cohort.manifest import UNLABELLED, load_manifest
from persam_lib.cohort.sanity import CohortError, check_trainable


def _drop_labels(cohort_dir, *, column: bool, rows=None):
    path = cohort_dir / "clinical.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if column:
        table = table.drop(columns=["subtype"])
    else:
        table.loc[rows if rows is not None else slice(None), "subtype"] = ""
    table.to_csv(path, index=False)
    return cohort_dir / "manifest.yaml"


def test_a_cohort_without_a_label_column_is_unlabelled(cohort_copy, capsys):
    manifest = _drop_labels(cohort_copy, column=True)
    cohort = load_manifest(manifest)
    assert cohort.labelling == "unlabelled" and len(cohort.unlabelled) == len(cohort.clinical)
    assert (cohort.labels() == UNLABELLED).all()
    assert main(["validate", str(manifest), "--quick"]) == 0
    captured = capsys.readouterr()
    assert "(unlabelled: 8 without a label; for predict and explain, not train)" in captured.out
    assert "the cohort is unlabelled" in captured.err


def test_train_refuses_a_partly_labelled_cohort_naming_the_patients(cohort_copy, tiny_features, capsys):
    manifest = _drop_labels(cohort_copy, column=False, rows=[0, 3])
    cohort = load_manifest(manifest)
    assert cohort.labelling == "partly labelled" and len(cohort.unlabelled) == 2
    with pytest.raises(CohortError, match="2 of 8 patient\\(s\\) have no label .* training needs the label of every patient"):
        check_trainable(cohort, 2)
    assert main(["train", str(manifest), "--features", str(tiny_features), "--out", str(cohort_copy / "run"), "--folds", "2", "--epochs", "1"]) == 2
    assert "persam predict" in capsys.readouterr().err and not (cohort_copy / "run").exists()


def test_a_label_that_is_not_a_class_is_still_an_error(cohort_copy):
    path = cohort_copy / "clinical.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[0, "subtype"] = "Z"
    table.to_csv(path, index=False)
    from persam_lib.cohort.manifest import ManifestError

    with pytest.raises(ManifestError, match="label 'Z' is not one of the classes"):
        load_manifest(cohort_copy / "manifest.yaml")
