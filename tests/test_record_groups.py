"""Record groups in the manifest: fields read together as one record token (the published PersAM's
"interview" and "blood" vectors); every other field is a group of its own."""
import json

import pytest

from persam_lib.cohort.manifest import ManifestError, load_manifest
from persam_lib.cohort.schema import FieldSchema


def _with_groups(cohort_copy, text: str):
    manifest = cohort_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text() + text)
    return manifest


def test_groups_are_read_and_ungrouped_fields_form_their_own(cohort_copy):
    cohort = load_manifest(_with_groups(cohort_copy, "groups:\n  interview: [age, sex]\n  blood: [ldh]\n"))
    assert cohort.schema.groups == (("interview", ("age", "sex")), ("blood", ("ldh",)))
    grouped = cohort.schema.record_groups()
    assert grouped[:2] == [("interview", ("age", "sex")), ("blood", ("ldh",))]
    assert {name for name, _ in grouped[2:]} == set(cohort.schema.names) - {"age", "sex", "ldh"}
    assert sorted(f for _, members in grouped for f in members) == sorted(cohort.schema.names)  # every field exactly once


def test_groups_round_trip_through_the_saved_schema(cohort_copy):
    schema = load_manifest(_with_groups(cohort_copy, "groups:\n  interview: [age, sex]\n")).schema
    again = FieldSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again.groups == schema.groups and again.record_groups() == schema.record_groups()


def test_without_groups_every_field_is_its_own_group(tiny_cohort):
    assert tiny_cohort.schema.groups == ()
    assert tiny_cohort.schema.record_groups() == [(name, (name,)) for name in tiny_cohort.schema.names]
    assert "groups" not in tiny_cohort.schema.to_dict()


@pytest.mark.parametrize(
    "text, message",
    [
        ("groups:\n  interview: [age, weight]\n", "field 'groups.interview': 'weight' is not a field of the manifest"),
        ("groups:\n  a: [age]\n  b: [age, sex]\n", "field 'groups.b': 'age' is already in group 'a'"),
        ("groups:\n  a: []\n", "field 'groups.a': a group needs a non-empty list of fields"),
        ("groups: [age, sex]\n", "field 'groups': 'groups' must be a non-empty mapping"),
        ("groups:\n  ldh: [age, sex]\n", "the group name 'ldh' is also a field outside the group"),
        ("groups:\n  ids: [mrn]\n", "'mrn' is marked identifying, so it is never a model input"),
    ],
)
def test_bad_groups_name_the_group_and_the_field(cohort_copy, text, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_with_groups(cohort_copy, text))
