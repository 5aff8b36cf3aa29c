import numpy as np
import pandas as pd
import pytest
import torch

from persam_lib.explain.attributions import attribute_run, decode_fields, encode_fields, integrated_gradients, shap_fields
from persam_lib.explain.attention import records_output
from persam_lib.train.data import ImageInput, load_sample
from persam_lib.models import ModelConfig, create_model
from persam_lib.train.checkpoint import LoadedModel


def _slide(tiny_cohort, tiny_features, index=0):
    row = tiny_cohort.slides.iloc[index]
    return load_sample(tiny_cohort, row.slide_id, tiny_features, ImageInput()), tiny_cohort.records().loc[row.patient_id]


@pytest.mark.parametrize("name", ["persam", "abmil", "concat"])
def test_integrated_gradients_are_complete(name, tiny_run, tiny_cohort, tiny_features):
    """Attributions over patches and clinical tokens sum to the logit's change from the baseline."""
    trained = tiny_run.model_for_fold(0)
    torch.manual_seed(0)
    model = trained.model if name == "persam" else create_model(name, trained.config).eval()
    if name != "persam":  # untrained: larger random weights, so the output really changes along the path
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.5)
    loaded = LoadedModel(name, model, trained.config, trained.record_encoder, trained.normaliser)
    data, record = _slide(tiny_cohort, tiny_features)
    result = integrated_gradients(loaded, data, record, tiny_cohort.records(), steps=8, tolerance=0.01)
    total = result.patches.sum() + (result.fields.sum() if result.fields is not None else 0.0)
    assert result.patches.shape == (len(data.coords),)
    assert (result.fields is None) == (name == "abmil")
    assert abs(result.logit_change) > 1e-3
    assert total == pytest.approx(result.logit_change, abs=0.01 * abs(result.logit_change) + 1e-4)  # steps doubled until complete
    assert result.delta == pytest.approx(abs(total - result.logit_change), abs=1e-4)


def test_shap_values_add_up_to_the_prediction_minus_the_background_mean(tiny_run, tiny_cohort, tiny_features):
    loaded = tiny_run.model_for_fold(0)
    data, record = _slide(tiny_cohort, tiny_features)
    records = tiny_cohort.records()
    background = records.iloc[:4]
    values = shap_fields(loaded, data, record, background, tiny_cohort.schema, target=1)
    prob = lambda table: torch.softmax(records_output(loaded, data, table).logits, -1)[:, 1].numpy()  # noqa: E731
    assert values.shape == (len(tiny_cohort.schema.fields),)
    assert values.sum() == pytest.approx(prob(pd.DataFrame([record]))[0] - prob(background).mean(), abs=1e-4)


def test_field_encoding_round_trips(tiny_cohort):
    records = tiny_cohort.records()
    encoded = encode_fields(records, tiny_cohort.schema)
    back = decode_fields(encoded, tiny_cohort.schema)
    for name in tiny_cohort.schema.names:
        a, b = records[name].to_numpy(), back[name].to_numpy()
        assert all((pd.isna(x) and pd.isna(y)) or x == y for x, y in zip(a, b)), name


def test_attribute_run_tables(tiny_run, tiny_cohort, tiny_features):
    result = attribute_run(tiny_run, tiny_cohort, tiny_features, slides=list(tiny_cohort.slides["slide_id"][:2]), steps=16, progress=False)
    assert len(result.slides) == 2 and result.slides["ig_attention_spearman"].between(-1, 1).all()
    assert {f"ig_{n}" for n in tiny_cohort.schema.names} <= set(result.slides.columns)
    assert list(result.shap.columns) == ["slide_id", *tiny_cohort.schema.names] and len(result.field_values) == 2
