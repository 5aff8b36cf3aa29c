import numpy as np
import pandas as pd
import pytest

from persam_lib.explain.attention import ATTENTION_COLUMNS, explain_run, read_table, write_table
from persam_lib.explain.records import ORIGINAL, default_alterations, parse_alteration
from persam_lib.explain.shift import attention_shift, jensen_shannon, mass_moved, topk_jaccard
from persam_lib.explain.truth import load_truth, truth_scores


def test_explain_output_contract(tiny_run, tiny_cohort, tiny_features, tmp_path):
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, progress=False)
    att = explanation.attention
    assert list(att.columns) == ATTENTION_COLUMNS
    assert set(att["slide_id"]) == set(tiny_cohort.slides["slide_id"])
    # default alterations: every categorical field to each of its other values -> original + sex + site
    assert att.groupby("slide_id")["record"].nunique().eq(3).all()
    assert {r.split("=")[0] for r in att["record"].unique()} == {ORIGINAL, "sex", "site"}
    sums = att.groupby(["slide_id", "record"])["attention"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert (att["size"] == 256).all()
    for suffix in (".csv", ".parquet"):
        back = read_table(write_table(att, tmp_path / f"att{suffix}"))
        assert list(back.columns) == ATTENTION_COLUMNS and len(back) == len(att)


def test_explain_uses_the_model_that_did_not_train_on_the_patient(tiny_run, tiny_cohort, tiny_features):
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, [parse_alteration("site=nodal", tiny_cohort.schema)], progress=False)
    folds = tiny_run.folds
    preds = explanation.predictions
    assert (preds["fold"].to_numpy() == folds.loc[preds["patient_id"]].to_numpy()).all()
    original = preds[preds["record"] == ORIGINAL].set_index("patient_id")
    held_out = tiny_run.predictions.set_index("patient_id")
    np.testing.assert_allclose(original.loc[held_out.index, "prob_A"], held_out["prob_A"], atol=1e-5)


def test_alterations_are_validated(tiny_cohort):
    schema = tiny_cohort.schema
    assert parse_alteration("site=extranodal;age=40", schema).label == "site=extranodal;age=40"
    with pytest.raises(ValueError, match="unknown field 'stage'"):
        parse_alteration("stage=IV", schema)
    with pytest.raises(ValueError, match=r"'mars' is not one of the allowed values.*one of \['nodal', 'extranodal'\]"):
        parse_alteration("site=mars", schema)
    with pytest.raises(ValueError, match="above the maximum 120"):
        parse_alteration("age=400", schema)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_alteration("site", schema)
    record = tiny_cohort.records().iloc[0]
    labels = [a.label for a in default_alterations(schema, record)]
    assert labels == [f"sex={'M' if record['sex'] == 'F' else 'F'}", f"site={'extranodal' if record['site'] == 'nodal' else 'nodal'}"]


def test_shift_metrics_on_known_distributions():
    p = np.array([0.5, 0.5, 0, 0])
    q = np.array([0, 0, 0.5, 0.5])
    assert jensen_shannon(p, p) == pytest.approx(0)
    assert jensen_shannon(p, q) == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert mass_moved(p, q) == pytest.approx(1.0)
    assert topk_jaccard(p, q, 2) == 0.0 and topk_jaccard(p, p, 2) == 1.0
    table = pd.DataFrame({"slide_id": "S", "x": [0, 1, 2, 3] * 2, "y": 0, "size": 1, "record": [ORIGINAL] * 4 + ["site=b"] * 4, "attention": np.concatenate([p, q])})
    shift = attention_shift(table, k=2)
    assert shift.iloc[0][["field", "jsd", "topk_jaccard", "mass_moved"]].tolist() == ["site", pytest.approx(1.0), 0.0, pytest.approx(1.0)]


def test_truth_scores_oracle_and_uniform(tiny_cohort, tiny_features):
    from persam_lib.explain.truth import region_fractions
    from persam_lib.features.store import read_features

    truth = load_truth(tiny_cohort)
    rows, expected = [], {}
    for slide_id in tiny_cohort.slides["slide_id"]:
        data = read_features(tiny_features / f"{slide_id}.h5")
        patient = tiny_cohort.slides.set_index("slide_id").loc[slide_id, "patient_id"]
        region = truth.region_for(tiny_cohort.clinical.loc[patient, "site"])
        inside = region_fractions(truth, slide_id, data.coords, data.patch_size)[region]
        oracle = inside.copy()  # attention proportional to how much of each patch is diagnostic
        expected[slide_id] = float(inside @ inside / inside.sum())
        for name, weights in (("oracle", oracle / oracle.sum()), ("uniform", np.full(len(inside), 1 / len(inside)))):
            rows.append(pd.DataFrame({"slide_id": slide_id, "x": data.coords[:, 0], "y": data.coords[:, 1], "size": data.patch_size, "record": ORIGINAL, "attention": weights, "kind": name}))
    table = pd.concat(rows)
    oracle_scores = truth_scores(table[table.kind == "oracle"].drop(columns="kind"), tiny_cohort, truth)
    uniform_scores = truth_scores(table[table.kind == "uniform"].drop(columns="kind"), tiny_cohort, truth)
    np.testing.assert_allclose(oracle_scores.set_index("slide_id")["mass_diagnostic"], pd.Series(expected), atol=1e-9)
    assert (oracle_scores["mass_diagnostic"].to_numpy() > 2 * uniform_scores["mass_diagnostic"].to_numpy()).all()
    np.testing.assert_allclose(uniform_scores["mass_diagnostic"], uniform_scores["uniform_diagnostic"], atol=1e-9)
    assert (uniform_scores["mass_diagnostic"] < 0.5).all()
