import pandas as pd
import pytest
import yaml

from persam_lib.cohort.manifest import ManifestError, load_manifest, validate_manifest


def _edit_csv(path, row, column, value):
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


def test_valid_manifest_loads(tiny_cohort):
    assert tiny_cohort.name == "demo"
    assert tiny_cohort.schema.names == ["age", "sex", "site", "ldh", "site_permuted"]
    assert len(tiny_cohort.slides) == 8 and tiny_cohort.slides["path"].map(lambda p: p.startswith("/")).all()
    assert set(tiny_cohort.labels()) <= {0, 1}


def test_missing_slide_file_names_file_line_and_field(cohort_copy):
    _edit_csv(cohort_copy / "slides.csv", 2, "path", "slides/nope.tiff")
    with pytest.raises(ManifestError) as err:
        load_manifest(cohort_copy / "manifest.yaml")
    message = str(err.value)
    assert "slides.csv, line 4, field 'path'" in message
    assert "nope.tiff" in message and "does not exist" in message and "Fix the path" in message


def test_unknown_category_names_allowed_values(cohort_copy):
    _edit_csv(cohort_copy / "clinical.csv", 0, "sex", "X")
    problems = validate_manifest(cohort_copy / "manifest.yaml")
    assert len(problems) == 1
    p = problems[0]
    assert p.line == 2 and p.field == "sex" and p.path.name == "clinical.csv"
    assert "'X' is not one of the allowed values ['F', 'M']" in str(p)


def test_out_of_range_value_says_the_range(cohort_copy):
    _edit_csv(cohort_copy / "clinical.csv", 3, "age", "150")
    with pytest.raises(ManifestError, match=r"clinical.csv, line 5, field 'age': 150 is above the maximum 120.*between 0 and 120 years"):
        load_manifest(cohort_copy / "manifest.yaml")


def test_all_problems_are_reported_together(cohort_copy):
    _edit_csv(cohort_copy / "clinical.csv", 0, "sex", "X")
    _edit_csv(cohort_copy / "clinical.csv", 1, "age", "-4")
    _edit_csv(cohort_copy / "clinical.csv", 2, "subtype", "Z")
    problems = validate_manifest(cohort_copy / "manifest.yaml")
    assert {(p.line, p.field) for p in problems} == {(2, "sex"), (3, "age"), (4, "subtype")}


def test_missing_values_are_allowed(cohort_copy):
    _edit_csv(cohort_copy / "clinical.csv", 0, "age", "")
    cohort = load_manifest(cohort_copy / "manifest.yaml")
    assert pd.isna(cohort.clinical["age"].iloc[0])


def test_duplicate_slide_and_unknown_patient(cohort_copy):
    table = pd.read_csv(cohort_copy / "slides.csv", dtype=str)
    table.loc[1, "slide_id"] = table.loc[0, "slide_id"]
    table.loc[2, "patient_id"] = "P9999"
    table.to_csv(cohort_copy / "slides.csv", index=False)
    messages = [str(p) for p in validate_manifest(cohort_copy / "manifest.yaml")]
    assert any("slide_id 'S0001' appears more than once" in m and "line 3" in m for m in messages)
    assert any("patient 'P9999' is not in the clinical table" in m and "line 4" in m for m in messages)


def test_same_patient_under_two_labels(cohort_copy):
    table = pd.read_csv(cohort_copy / "clinical.csv", dtype=str, keep_default_na=False)
    dup = table.iloc[[0]].copy()
    dup["subtype"] = "B" if table.loc[0, "subtype"] == "A" else "A"
    pd.concat([table, dup]).to_csv(cohort_copy / "clinical.csv", index=False)
    with pytest.raises(ManifestError, match=r"patient 'P0001' appears more than once with different labels \['A', 'B'\]"):
        load_manifest(cohort_copy / "manifest.yaml")


def test_manifest_keys_are_checked(cohort_copy):
    raw = yaml.safe_load((cohort_copy / "manifest.yaml").read_text())
    del raw["label"]
    raw["slides_table"] = "x.csv"
    (cohort_copy / "manifest.yaml").write_text(yaml.safe_dump(raw))
    messages = [str(p) for p in validate_manifest(cohort_copy / "manifest.yaml")]
    assert any("required key 'label' is missing" in m for m in messages)
    assert any("unknown key 'slides_table'" in m for m in messages)


def test_missing_manifest_and_bad_yaml(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("cohort: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path / "bad.yaml")


def test_absurd_mpp_is_rejected(cohort_copy):
    table = pd.read_csv(cohort_copy / "slides.csv", dtype=str)
    table["mpp"] = ""
    table.loc[0, "mpp"] = "500"
    table.to_csv(cohort_copy / "slides.csv", index=False)
    with pytest.raises(ManifestError, match=r"line 2, field 'mpp'.*not a plausible"):
        load_manifest(cohort_copy / "manifest.yaml")


def test_template_manifest_is_valid_but_for_the_slides_it_awaits():
    from pathlib import Path

    template = Path(__file__).resolve().parents[1] / "data_manifests" / "template" / "manifest.yaml"
    problems = validate_manifest(template)
    assert len(problems) == 3
    assert all(p.field == "path" and "does not exist" in p.problem for p in problems)
    cohort = load_manifest(template, check_files=False)
    assert cohort.schema.label.classes == ("DLBCL", "FL") and len(cohort.slides) == 3


def test_negative_control_is_the_source_field_permuted(cohort_copy):
    import yaml

    from persam_lib.cohort.manifest import load_manifest

    manifest = cohort_copy / "manifest.yaml"
    raw = yaml.safe_load(manifest.read_text())
    assert raw["fields"]["site_permuted"]["permutation_of"] == "site"  # the demo cohort ships one
    cohort = load_manifest(manifest)
    site, control = cohort.clinical["site"], cohort.clinical["site_permuted"]
    assert sorted(site) == sorted(control) and cohort.schema.negative_controls == ["site_permuted"]
    assert load_manifest(manifest).clinical["site_permuted"].equals(control)  # the same permutation every time
    raw["fields"]["ldh_permuted"] = {"type": "categorical", "values": ["x"], "permutation_of": "ldh"}
    raw["fields"]["bad"] = {"type": "numeric", "permutation_of": "nothing"}
    manifest.write_text(yaml.safe_dump(raw))
    problems = "\n".join(str(p) for p in validate_manifest(manifest))
    assert "field 'fields.ldh_permuted': a negative control must have the type of 'ldh' (numeric). Set `type: numeric`." in problems
    assert "field 'fields.bad': 'permutation_of: nothing' must name another field" in problems


def test_unquoted_yes_no_values_are_named_with_the_fix(cohort_copy):
    """YAML reads `values: [yes, no]` as booleans; the message says so instead of one error per row."""
    manifest = cohort_copy / "manifest.yaml"
    text = manifest.read_text()
    manifest.write_text(text.replace("    - F\n    - M\n", "    - yes\n    - no\n"))
    problems = validate_manifest(manifest)
    assert len(problems) == 1 and problems[0].field == "fields.sex"
    assert "YAML reads unquoted yes/no" in str(problems[0]) and "values: ['yes', 'no']" in str(problems[0])
    manifest.write_text(text.replace("    - F\n    - M\n", "    - 'yes'\n    - 'no'\n"))
    assert all("YAML" not in str(p) for p in validate_manifest(manifest))  # quoted: the table's F/M are then what is wrong
