"""Record groups become one vector, then one token, per group."""
import pandas as pd
import pytest
import torch

from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec
from persam_lib.models.clinical import RecordEncoder
from persam_lib.models.record_groups import GroupTokenizer, GroupVectors, group_indices

SCHEMA = FieldSchema(
    fields=(FieldSpec("age", "numeric"), FieldSpec("sex", "categorical", values=("F", "M")), FieldSpec("ldh", "numeric"), FieldSpec("site", "categorical", values=("a", "b", "c"))),
    label=LabelSpec("y", ("A", "B")),
    groups=(("interview", ("age", "sex")),),
)


def _encoded(records: pd.DataFrame):
    encoder = RecordEncoder(SCHEMA).fit(records)
    return encoder, *encoder.encode(records)


def test_vectors_hold_one_hot_categories_standardised_numbers_and_missing_flags():
    records = pd.DataFrame({"age": [40.0, 60.0, None], "sex": ["M", None, "F"], "ldh": [200.0, 400.0, 300.0], "site": ["c", "a", None]})
    encoder, codes, values = _encoded(records)
    groups = group_indices(SCHEMA.names, SCHEMA.record_groups())
    assert groups == ((0, 1), (2,), (3,))  # interview, then ldh and site on their own
    vectors = GroupVectors(encoder.cardinalities, groups)(codes, values)
    assert vectors.shape == (3, 3, 5)  # widest group: age (2) + sex (2 + 1)
    z = lambda v: float((v - 50.0) / records["age"].std())  # noqa: E731
    torch.testing.assert_close(vectors[0, 0], torch.tensor([z(40.0), 0.0, 0.0, 1.0, 0.0]))  # age, present; sex = M
    torch.testing.assert_close(vectors[1, 0], torch.tensor([z(60.0), 0.0, 0.0, 0.0, 1.0]))  # sex missing
    torch.testing.assert_close(vectors[2, 0], torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))  # age missing, sex = F
    torch.testing.assert_close(vectors[0, 2, :4], torch.tensor([0.0, 0.0, 1.0, 0.0]))  # site = c
    torch.testing.assert_close(vectors[2, 2, :4], torch.tensor([0.0, 0.0, 0.0, 1.0]))  # site missing


def test_one_token_per_group_and_each_group_reads_only_its_fields():
    records = pd.DataFrame({"age": [40.0, 60.0], "sex": ["M", "F"], "ldh": [200.0, 400.0], "site": ["c", "a"]})
    encoder, codes, values = _encoded(records)
    tokenizer = GroupTokenizer(encoder.cardinalities, group_indices(SCHEMA.names, SCHEMA.record_groups()), 16)
    tokens = tokenizer(codes, values)
    assert tokens.shape == (2, 3, 16)
    changed = values.clone()
    changed[:, 2] += 1.0  # ldh only
    again = tokenizer(codes, changed)
    torch.testing.assert_close(again[:, 0], tokens[:, 0])  # the interview token does not see ldh
    assert not torch.allclose(again[:, 1], tokens[:, 1])


def test_a_group_naming_an_unknown_field_is_an_error():
    with pytest.raises(ValueError, match=r"record groups name fields \['weight'\]"):
        group_indices(["age"], [("g", ("age", "weight"))])


def _persam(record_tokens: str, cardinalities, groups):
    from persam_lib.models import create_model
    from persam_lib.models.base import ModelConfig, ModelSettings

    settings = ModelSettings(d_model=16, n_heads=2, dropout=0.0, record_tokens=record_tokens)
    config = ModelConfig.from_settings(settings, feature_dim=8, n_classes=2, field_cardinalities=cardinalities, record_groups=groups)
    torch.manual_seed(0)
    return create_model("persam", config).eval()


def test_our_persam_reads_one_token_per_group_when_asked():
    from persam_lib.models.base import Batch

    records = pd.DataFrame({"age": [40.0, 60.0], "sex": ["M", "F"], "ldh": [200.0, 400.0], "site": ["c", "a"]})
    encoder, codes, values = _encoded(records)
    groups = group_indices(SCHEMA.names, SCHEMA.record_groups())
    grouped, per_field = _persam("group", encoder.cardinalities, groups), _persam("field", encoder.cardinalities, groups)
    assert isinstance(grouped.clinical, GroupTokenizer) and grouped.n_record == 3
    assert per_field.n_record == 4
    features = torch.randn(1, 12, 8)
    batch = Batch(features, torch.ones(1, 12, dtype=torch.bool), torch.zeros(1, 12, 2, dtype=torch.long), codes, values)
    out = grouped(batch)
    assert out.logits.shape == (2, 2) and out.patch_attention.shape == (2, 12)
    assert out.field_attention is None  # it attends to groups, not fields
    assert per_field(batch).field_attention.shape == (2, 4)
    # the record still steers the map: the two patients' maps differ
    assert not torch.allclose(out.patch_attention[0], out.patch_attention[1])
    with torch.no_grad():  # the ldh group's token is what changes when ldh changes
        changed = values.clone()
        changed[:, 2] += 3.0
        assert not torch.allclose(grouped(Batch(features, batch.patch_mask, batch.coords, codes, changed)).patch_attention, out.patch_attention)


def test_record_tokens_accepts_only_field_or_group():
    from persam_lib.models.base import ModelSettings

    with pytest.raises(ValueError, match="record_tokens' must be 'field' or 'group'"):
        ModelSettings(record_tokens="fields")
