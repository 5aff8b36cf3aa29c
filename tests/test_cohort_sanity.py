"""A cohort that is valid row by row but not trainable is refused, and CSV files name the likely cause of their problems."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from persam_lib.cli import main
from persam_lib.cohort.manifest import ManifestError, load_manifest, validate_manifest
from persam_lib.cohort.sanity import CohortError, check_trainable, cohort_issues

PERSAM = Path(sys.executable).with_name("persam")


def _set_column(csv, column, values):
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table[column] = values
    table.to_csv(csv, index=False)


def _validate(manifest, capsys):
    code = main(["validate", "--quick", str(manifest)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_tiny_cohort_trains_with_four_folds_and_warns_about_five(tiny_cohort):
    assert check_trainable(tiny_cohort, 2) == [] and check_trainable(tiny_cohort, 4) == []
    errors, warnings = cohort_issues(tiny_cohort, None)
    assert errors == [] and len(warnings) == 1
    assert "field 'subtype': classes 'A' (4), 'B' (4) have fewer patients with a slide than the default 5 folds. Train with --folds <= 4" in warnings[0]


def test_a_one_class_cohort_is_refused_naming_the_class(cohort_copy, capsys):
    _set_column(cohort_copy / "clinical.csv", "subtype", "A")
    cohort = load_manifest(cohort_copy / "manifest.yaml")  # every row is valid
    with pytest.raises(CohortError) as err:
        check_trainable(cohort, 2)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert message.startswith(f"{cohort_copy / 'clinical.csv'}, field 'subtype': only class 'A' is present among the 8 patient(s) with a slide (declared classes ['A', 'B'])")
    assert "add patients of class 'B'" in message
    code, out, err_text = _validate(cohort_copy / "manifest.yaml", capsys)
    assert code == 2 and "only class 'A' is present" in err_text and "valid —" not in out


def test_persam_train_refuses_a_one_class_cohort_before_writing(cohort_copy, tmp_path):
    """CLI path: needs `check_trainable` wired into persam_lib/train/run.py (prepare_training)."""
    _set_column(cohort_copy / "clinical.csv", "subtype", "B")
    run = tmp_path / "run"
    result = subprocess.run([str(PERSAM), "train", str(cohort_copy / "manifest.yaml"), "--features", str(tmp_path / "features"), "--out", str(run), "--folds", "2", "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "persam train: error:" in result.stderr and "only class 'B' is present" in result.stderr and "add patients of class 'A'" in result.stderr
    assert "balanced accuracy" not in result.stdout and not run.exists()


def test_a_class_smaller_than_the_folds_is_an_error_at_training(cohort_copy, capsys):
    _set_column(cohort_copy / "clinical.csv", "subtype", ["A", "A", "B", "B", "B", "B", "B", "B"])
    cohort = load_manifest(cohort_copy / "manifest.yaml")
    with pytest.raises(CohortError, match=r"field 'subtype': class 'A' \(2\) has fewer patients with a slide than the 3 folds \(every test fold needs a patient of every class\)\. Train with --folds <= 2, or add patients of class 'A'\."):
        check_trainable(cohort, 3)
    assert check_trainable(cohort, 2) == []
    code, _, err = _validate(cohort_copy / "manifest.yaml", capsys)  # validate knows no fold count: a warning
    assert code == 0 and "warning: " in err and "field 'subtype': class 'A' (2) has fewer patients with a slide than the default 5 folds. Train with --folds <= 2" in err


def test_a_class_of_one_patient_cannot_be_cross_validated(cohort_copy):
    _set_column(cohort_copy / "clinical.csv", "subtype", ["A"] + ["B"] * 7)
    with pytest.raises(CohortError, match=r"Add patients of class 'A': cross-validation needs at least 2 patients per class"):
        check_trainable(load_manifest(cohort_copy / "manifest.yaml"), 2)


def test_a_field_missing_for_every_patient_is_an_error(cohort_copy, capsys):
    _set_column(cohort_copy / "clinical.csv", "ldh", "")
    code, _, err = _validate(cohort_copy / "manifest.yaml", capsys)
    assert code == 2
    assert "clinical.csv, field 'ldh': the field is empty for every patient with a slide (8 patient(s)); nothing can be learned from it. Fill in the column 'ldh', or remove 'ldh' from `fields`" in err
    with pytest.raises(CohortError, match="field 'ldh': the field is empty"):
        check_trainable(load_manifest(cohort_copy / "manifest.yaml"), 2)


def test_several_errors_are_listed_together(cohort_copy):
    _set_column(cohort_copy / "clinical.csv", "ldh", "")
    _set_column(cohort_copy / "clinical.csv", "age", "")
    _set_column(cohort_copy / "clinical.csv", "subtype", "A")
    with pytest.raises(CohortError) as err:
        check_trainable(load_manifest(cohort_copy / "manifest.yaml"), 2)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 problem(s) make the cohort unfit for training:"
    assert [l.split("field ")[1].split(":")[0] for l in lines[1:]] == ["'subtype'", "'age'", "'ldh'"]


def test_a_constant_field_is_a_warning(cohort_copy, capsys):
    _set_column(cohort_copy / "clinical.csv", "sex", ["F"] * 7 + [""])
    code, out, err = _validate(cohort_copy / "manifest.yaml", capsys)
    assert code == 0 and "valid —" in out
    assert "warning: " in err and "field 'sex': every patient with a slide has the value 'F' (1 patient(s) have no value); a constant field carries no information" in err
    assert "site_permuted" not in err  # a negative control mirrors its source: not checked apart


def test_a_clinical_row_without_a_slide_is_a_warning(cohort_copy, capsys):
    table = pd.read_csv(cohort_copy / "clinical.csv", dtype=str, keep_default_na=False)
    extra = table.iloc[[0, 1]].assign(patient_id=["P0100", "P0101"])
    pd.concat([table, extra]).to_csv(cohort_copy / "clinical.csv", index=False)
    code, out, err = _validate(cohort_copy / "manifest.yaml", capsys)
    assert code == 0 and "valid —" in out
    assert "field 'patient_id': 2 patient(s) have no slide and are not used: 'P0100' (line 10), 'P0101' (line 11)" in err


def _rewrite(csv, **to_csv):
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.to_csv(csv, index=False, **to_csv)


@pytest.mark.parametrize("sep, name", [(";", ";"), ("\t", "tab")])
def test_a_semicolon_or_tab_separated_table_says_so(cohort_copy, sep, name):
    _rewrite(cohort_copy / "clinical.csv", sep=sep)
    problems = validate_manifest(cohort_copy / "manifest.yaml")
    assert len(problems) == 1 and problems[0].line == 1
    assert f"clinical.csv, line 1: looks {name}-separated (the header" in str(problems[0]) and "Save it as comma-separated" in str(problems[0])


def test_a_latin1_table_says_it_is_not_utf8(cohort_copy):
    table = pd.read_csv(cohort_copy / "clinical.csv", dtype=str, keep_default_na=False)
    table["comment"] = ["ok"] * 4 + ["Hôpital Saint-Éloi"] + ["ok"] * 3  # an extra column, not a field
    table.to_csv(cohort_copy / "clinical.csv", index=False, encoding="cp1252")
    with pytest.raises(ManifestError) as err:
        load_manifest(cohort_copy / "manifest.yaml")
    message = str(err.value)
    assert "clinical.csv, line 6: is not UTF-8 text (byte 0xf4 in " in message and "Hôpital" in message
    assert "most likely Latin-1/Windows-1252" in message and "'CSV UTF-8 (Comma delimited)'" in message


def test_a_latin1_semicolon_table_gets_both_causes(cohort_copy):
    table = pd.read_csv(cohort_copy / "clinical.csv", dtype=str, keep_default_na=False)
    table["comment"] = "Zürich"
    table.to_csv(cohort_copy / "clinical.csv", index=False, encoding="cp1252", sep=";")
    text = "\n".join(str(p) for p in validate_manifest(cohort_copy / "manifest.yaml"))
    assert "is not UTF-8 text" in text and "looks ;-separated" in text


def test_a_utf8_bom_is_accepted_silently(cohort_copy):
    _rewrite(cohort_copy / "clinical.csv", encoding="utf-8-sig")
    _rewrite(cohort_copy / "slides.csv", encoding="utf-8-sig")
    assert (cohort_copy / "clinical.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    cohort = load_manifest(cohort_copy / "manifest.yaml")
    assert cohort.clinical.index[0] == "P0001" and cohort.slides["slide_id"].iloc[0] == "S0001"


def test_a_utf16_table_says_so(cohort_copy):
    _rewrite(cohort_copy / "slides.csv", encoding="utf-16")
    problems = validate_manifest(cohort_copy / "manifest.yaml")
    assert len(problems) == 1 and problems[0].path.name == "slides.csv"
    assert "is saved as UTF-16 (Excel's 'Unicode Text'), not as UTF-8 CSV. Re-save it as 'CSV UTF-8 (Comma delimited)'" in str(problems[0])
