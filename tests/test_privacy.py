import pandas as pd
import pytest
import yaml

from persam_lib.book.privacy import Pseudonyms, scan_for_leaks, sensitive_strings
from persam_lib.cohort.manifest import load_manifest, validate_manifest


def test_identifying_fields_are_neither_model_inputs_nor_shown(tiny_cohort):
    assert "mrn" not in tiny_cohort.schema.names and "mrn" not in tiny_cohort.clinical.columns
    assert list(tiny_cohort.identifying.columns) == ["mrn"] and tiny_cohort.identifying["mrn"].str.startswith("MRN-").all()


def test_text_fields_must_be_identifying(cohort_copy):
    manifest = cohort_copy / "manifest.yaml"
    raw = yaml.safe_load(manifest.read_text())
    raw["fields"]["mrn"] = {"type": "text"}
    manifest.write_text(yaml.safe_dump(raw))
    assert any("a text field must be marked `identifying: true`" in str(p) for p in validate_manifest(manifest))


def test_pseudonyms_keep_pseudonymous_ids_and_replace_real_ones(tiny_cohort, cohort_copy):
    names = Pseudonyms.for_cohort(tiny_cohort)
    assert all(k == v for k, v in names.patients.items())  # the demo's ids already are pseudonyms
    clinical = pd.read_csv(cohort_copy / "clinical.csv", dtype=str)
    slides = pd.read_csv(cohort_copy / "slides.csv", dtype=str)
    real = {p: f"HOSP-{9000 - i}" for i, p in enumerate(clinical["patient_id"])}
    clinical["patient_id"] = clinical["patient_id"].map(real)
    slides["patient_id"] = slides["patient_id"].map(real)
    clinical.to_csv(cohort_copy / "clinical.csv", index=False)
    slides.to_csv(cohort_copy / "slides.csv", index=False)
    cohort = load_manifest(cohort_copy / "manifest.yaml")
    names = Pseudonyms.for_cohort(cohort)
    assert sorted(names.patients.values()) == [f"P{i:04d}" for i in range(1, len(real) + 1)]
    assert names.patient(min(real.values())) == "P0001"  # sorted id order
    shown = names.table(cohort.clinical)
    assert not shown.index.isin(list(real.values())).any() and shown.index.name == "patient_id"


def test_the_scan_finds_real_ids_and_identifying_values(tiny_cohort, tmp_path):
    mrn = tiny_cohort.identifying["mrn"].iloc[0]
    site = tmp_path / "html"
    (site / "book").mkdir(parents=True)
    (site / "index.html").write_text("<p>P0001 and S0001 are pseudonyms</p><p>MRN-1234567890 is a longer token</p>")
    (site / "book" / "chapter.html").write_text(f"<td>{mrn}</td>")
    (site / "searchindex.js").write_text(f'Search.setIndex({{"terms": {{"{mrn}": [1]}}}})')
    (site / "figure.png").write_bytes(mrn.encode())  # not text: not scanned
    leaks, short = scan_for_leaks(site, tiny_cohort)
    assert sorted((leak.file.name, leak.kind, leak.value) for leak in leaks) == [("chapter.html", "identifying field 'mrn'", mrn), ("searchindex.js", "identifying field 'mrn'", mrn)]
    assert short == []
    targets, _ = sensitive_strings(tiny_cohort)
    assert set(targets.values()) == {"identifying field 'mrn'"}  # the demo's ids are pseudonymous, so only the MRNs are secret
