"""Ids that become file names are checked at the boundary; input paths that are not readable files say exactly why."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from persam_lib.cli import main
from persam_lib.cohort.manifest import ManifestError, load_manifest, validate_manifest

PERSAM = Path(sys.executable).with_name("persam")  # the installed console script of this environment


def _edit_csv(path, row, column, value):
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


def _messages(manifest) -> str:
    return "\n".join(str(p) for p in validate_manifest(manifest))


@pytest.mark.parametrize("bad", ["../../x", "/tmp/evil", ".hidden", "a b"])
def test_an_unsafe_slide_id_names_file_line_and_field(cohort_copy, bad):
    _edit_csv(cohort_copy / "slides.csv", 2, "slide_id", bad)
    problems = validate_manifest(cohort_copy / "manifest.yaml")
    assert len(problems) == 1
    text = str(problems[0])
    assert f"slides.csv, line 4, field 'slide_id': the slide_id {bad!r} is not a safe file name (it must use letters, digits" in text
    assert "Rename the slide in this table" in text


def test_an_unsafe_patient_id_is_reported_in_both_tables(cohort_copy):
    _edit_csv(cohort_copy / "slides.csv", 1, "patient_id", "../P0002")
    _edit_csv(cohort_copy / "clinical.csv", 1, "patient_id", "../P0002")
    text = _messages(cohort_copy / "manifest.yaml")
    assert "slides.csv, line 3, field 'patient_id': the patient_id '../P0002' is not a safe file name" in text
    assert "clinical.csv, line 3, field 'patient_id': the patient_id '../P0002' is not a safe file name" in text
    assert "Rename the patient here and in the clinical table" in text and "Rename the patient here and in the sample table" in text


def test_an_unsafe_cohort_name_names_the_manifest_line(cohort_copy):
    manifest = cohort_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("cohort: demo", "cohort: ../../outside"))
    problems = validate_manifest(manifest)
    assert [(p.path.name, p.line, p.field) for p in problems] == [("manifest.yaml", 1, "cohort")]
    assert "the cohort name '../../outside' is not a safe file name" in str(problems[0]) and "Rename it in `cohort:`" in str(problems[0])


def _image_cohort(root: Path, image_id: str = "I0002") -> Path:
    """A four-image cohort made by hand: PNGs, image table, clinical table, manifest."""
    (root / "images").mkdir(parents=True)
    rows, clinical = [], []
    for i, pid in enumerate(["P1", "P2", "P3", "P4"]):
        sample = image_id if i == 1 else f"I000{i + 1}"
        Image.fromarray(np.full((32, 32), 40 * i, dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"image_id": sample, "patient_id": pid, "path": f"images/{i}.png"})
        clinical.append({"patient_id": pid, "age": 50 + i, "label": "AB"[i % 2]})
    pd.DataFrame(rows).to_csv(root / "images.csv", index=False)
    pd.DataFrame(clinical).to_csv(root / "clinical.csv", index=False)
    manifest = {"cohort": "hand", "images": "images.csv", "clinical": "clinical.csv", "label": {"column": "label", "classes": ["A", "B"]}, "fields": {"age": {"type": "numeric", "min": 0, "max": 120}}}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return root / "manifest.yaml"


def test_an_unsafe_image_id_names_the_image_table(tmp_path):
    assert load_manifest(_image_cohort(tmp_path / "ok")).slides["slide_id"].tolist() == ["I0001", "I0002", "I0003", "I0004"]
    manifest = _image_cohort(tmp_path / "bad", image_id="../../I0002")
    problems = validate_manifest(manifest)
    assert len(problems) == 1 and (problems[0].path.name, problems[0].line, problems[0].field) == ("images.csv", 3, "image_id")
    assert "the image_id '../../I0002' is not a safe file name" in str(problems[0]) and "Rename the image in this table" in str(problems[0])


@pytest.mark.parametrize("bad", ["../../x", "/tmp/persam-absolute-id"])
def test_the_installed_validate_exits_2_on_an_unsafe_id(cohort_copy, bad):
    _edit_csv(cohort_copy / "slides.csv", 0, "slide_id", bad)
    result = subprocess.run([str(PERSAM), "validate", str(cohort_copy / "manifest.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "persam validate: error:" in result.stderr and f"line 2, field 'slide_id': the slide_id {bad!r} is not a safe file name" in result.stderr
    assert "Traceback" not in result.stderr and "valid —" not in result.stdout


def test_extract_on_an_unsafe_id_writes_nothing_outside_out(cohort_copy, tmp_path, capsys):
    _edit_csv(cohort_copy / "slides.csv", 0, "slide_id", "../../escaped")
    out = tmp_path / "a" / "b" / "features"
    assert main(["extract", str(cohort_copy / "manifest.yaml"), "--out", str(out), "--readers", "0"]) == 2
    assert "the slide_id '../../escaped' is not a safe file name" in capsys.readouterr().err
    assert not (out / ".." / ".." / "escaped.h5").resolve().exists() and not (tmp_path / "a" / "escaped.h5").exists()
    assert not list(tmp_path.rglob("escaped*")) and not out.exists()  # refused before anything is written


def test_a_slide_path_that_is_a_directory_or_a_device_says_so(cohort_copy):
    _edit_csv(cohort_copy / "slides.csv", 2, "path", "slides")
    _edit_csv(cohort_copy / "slides.csv", 3, "path", "/dev/null")
    problems = {p.line: p for p in validate_manifest(cohort_copy / "manifest.yaml")}
    assert set(problems) == {4, 5} and all(p.field == "path" for p in problems.values())
    assert str(problems[4]).startswith(f"{cohort_copy / 'slides.csv'}, line 4, field 'path': slide file {cohort_copy / 'slides'} is a directory, not a file (slide 'S0003'). Fix the path so it names the slide file itself")
    assert "slide file /dev/null is not a regular file (a device, pipe or socket) (slide 'S0004')" in str(problems[5])
    assert "does not exist" not in str(problems[4]) + str(problems[5])


def test_an_absolute_slide_path_is_accepted(cohort_copy):
    _edit_csv(cohort_copy / "slides.csv", 0, "path", str((cohort_copy / "slides" / "S0001.tiff").resolve()))
    assert validate_manifest(cohort_copy / "manifest.yaml") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_slide_file_says_permission_denied(cohort_copy, tmp_path):
    locked = tmp_path / "locked.tiff"
    locked.write_bytes(b"II*\x00")
    locked.chmod(0)
    _edit_csv(cohort_copy / "slides.csv", 0, "path", str(locked))
    text = _messages(cohort_copy / "manifest.yaml")
    assert "is not readable (permission denied)" in text and "chmod" in text


def test_manifest_table_paths_that_are_directories_or_devices_say_so(cohort_copy):
    manifest = cohort_copy / "manifest.yaml"
    (cohort_copy / "tables").mkdir()
    text = manifest.read_text().replace("clinical: clinical.csv", "clinical: tables").replace("truth: truth/truth.yaml", "truth: truth")
    manifest.write_text(text.replace("slides: slides.csv", "slides: /dev/null"))
    problems = {p.field: p for p in validate_manifest(manifest)}
    assert set(problems) == {"slides", "clinical", "truth"} and all(p.path == manifest for p in problems.values())
    assert f"manifest.yaml, line 2, field 'slides': the slides table /dev/null is not a regular file (a device, pipe or socket). Fix the `slides:` path" in str(problems["slides"])
    assert f"line 3, field 'clinical': the clinical table {cohort_copy / 'tables'} is a directory, not a file" in str(problems["clinical"])
    assert f"field 'truth': the truth file {cohort_copy / 'truth'} is a directory, not a file" in str(problems["truth"])


def test_an_unsafe_yaml_tag_or_bad_syntax_is_a_problem_with_its_line(cohort_copy, capsys):
    manifest = cohort_copy / "manifest.yaml"
    original = manifest.read_text()
    manifest.write_text(original.replace("cohort: demo", "cohort: !!python/object/apply:os.system ['touch pwned']"))
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest)
    assert f"{manifest}, line 1: uses a YAML tag that is not plain data" in str(err.value) and not (cohort_copy / "pwned").exists()
    manifest.write_text(original.replace("fields:", "fields: [unclosed"))
    problems = validate_manifest(manifest)
    assert len(problems) == 1 and problems[0].line is not None and "is not valid YAML" in str(problems[0])
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"persam validate: error: {manifest}, line" in err and "Traceback" not in err
