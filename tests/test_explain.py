import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from persam_lib.cohort.truth import load_truth
from persam_lib.explain.attention import ATTENTION_COLUMNS, explain_run, read_table, write_table
from persam_lib.explain.records import ORIGINAL, alterations_from_yaml, default_alterations, field_of, numeric_targets, parse_alteration
from persam_lib.explain.report import explanation_report, null_fields_of, write_figures, write_metrics
from persam_lib.explain.shift import attention_shift, jensen_shannon, mass_moved, topk_jaccard
from persam_lib.explain.summary import null_comparison, summarise_shift
from persam_lib.explain.truth_scores import patch_auroc, truth_scores, with_baselines
from persam_lib.models.base import Batch, ModelOutput
from persam_lib.train.checkpoint import LoadedModel
from persam_lib.train.run import Run


def test_explain_output_contract(tiny_run, tiny_cohort, tiny_features, tmp_path):
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, progress=False)
    att = explanation.attention
    assert list(att.columns) == ATTENTION_COLUMNS + ["attention_rollout"]
    assert set(att["slide_id"]) == set(tiny_cohort.slides["slide_id"])
    # default alterations cover every field: categorical to each other value, numeric to cohort quantiles
    assert {field_of(r) for r in att["record"].unique()} == {ORIGINAL, *tiny_cohort.schema.names}
    for column in ("attention", "attention_rollout"):
        np.testing.assert_allclose(att.groupby(["slide_id", "record"])[column].sum(), 1.0, atol=1e-5)
    assert (att["size"] == 256).all()
    for suffix in (".csv", ".parquet"):
        back = read_table(write_table(att, tmp_path / f"att{suffix}"))
        assert list(back.columns) == list(att.columns) and len(back) == len(att)
    heads = explain_run(tiny_run, tiny_cohort, tiny_features, [parse_alteration("site=nodal", tiny_cohort.schema)], progress=False, config=__import__("persam_lib.explain.attention", fromlist=["ExplainConfig"]).ExplainConfig(per_head=True))
    assert {"attention_head_0", "attention_head_1"} <= set(heads.attention.columns)


def test_explain_uses_the_model_that_did_not_train_on_the_patient(tiny_run, tiny_cohort, tiny_features):
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, [parse_alteration("site=nodal", tiny_cohort.schema)], progress=False)
    folds = tiny_run.folds
    preds = explanation.predictions
    assert (preds["fold"].to_numpy() == folds.loc[preds["patient_id"]].astype(str).to_numpy()).all()
    original = preds[preds["record"] == ORIGINAL].set_index("patient_id")
    held_out = tiny_run.predictions.set_index("patient_id")
    np.testing.assert_allclose(original.loc[held_out.index, "prob_A"], held_out["prob_A"], atol=1e-5)


def test_alterations_are_validated(tiny_cohort, tmp_path):
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
    path = tmp_path / "alterations.yaml"
    path.write_text("alterations:\n  - {site: nodal, ldh: 600}\n  - 'sex=F;age=30'\n")
    assert [a.label for a in alterations_from_yaml(path, schema)] == ["site=nodal;ldh=600", "sex=F;age=30"]
    path.write_text("alterations:\n  - {site: nodal}\n  - {ldh: 1e6}\n")
    with pytest.raises(ValueError, match=r"alterations.yaml, alteration 2, field 'ldh': 1e\+06 is above the maximum 3000"):
        alterations_from_yaml(path, schema)


def test_default_alterations_cover_every_field(tiny_cohort):
    schema, records = tiny_cohort.schema, tiny_cohort.records()
    targets = numeric_targets(schema, records, (0.1, 0.5, 0.9))
    assert set(targets) == {"age", "ldh"}
    np.testing.assert_allclose(targets["age"], np.quantile(records["age"], [0.1, 0.5, 0.9]), rtol=1e-3)
    record = records.iloc[0]
    labels = [a.label for a in default_alterations(schema, record, targets)]
    other = {"F": "M", "M": "F", "nodal": "extranodal", "extranodal": "nodal"}
    assert f"sex={other[record['sex']]}" in labels and f"site={other[record['site']]}" in labels and f"site_permuted={other[record['site_permuted']]}" in labels
    assert sum(label.startswith("age=") for label in labels) == 3 and all(parse_alteration(label, schema) for label in labels)
    with pytest.raises(ValueError, match="quantiles must lie in"):
        numeric_targets(schema, records, (0.5, 1.5))


def test_shift_metrics_on_known_distributions():
    p = np.array([0.5, 0.5, 0, 0])
    q = np.array([0, 0, 0.5, 0.5])
    assert jensen_shannon(p, p) == pytest.approx(0)
    assert jensen_shannon(p, q) == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert mass_moved(p, q) == pytest.approx(1.0)
    assert topk_jaccard(p, q, 2) == 0.0 and topk_jaccard(p, p, 2) == 1.0
    table = pd.DataFrame({"slide_id": "S", "x": [0, 1, 2, 3] * 2, "y": 0, "size": 1, "record": [ORIGINAL] * 4 + ["site=b"] * 4, "attention": np.concatenate([p, q])})
    predictions = pd.DataFrame({"slide_id": "S", "record": [ORIGINAL, "site=b"], "prob_A": [0.9, 0.3], "prob_B": [0.1, 0.7], "y_pred": ["A", "B"]})
    shift = attention_shift(table, predictions, k=2)
    assert shift.iloc[0][["field", "jsd", "topk_jaccard", "mass_moved", "prediction_flipped"]].tolist() == ["site", pytest.approx(1.0), 0.0, pytest.approx(1.0), True]
    assert shift.iloc[0]["prob_change"] == pytest.approx(-0.6)


class _SiteSteered(nn.Module):
    """A hand-built model: attention on the first half of the patches when site is the first value,
    on the second half otherwise (uniform within the half); sex is ignored; the logit follows site."""

    def __init__(self, site_column: int):
        super().__init__()
        self.site_column = site_column
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        n, k = batch.features.shape[1], batch.n_rows
        first = (batch.codes[:, self.site_column] == 1)[:, None]  # (K, 1)
        half = (torch.arange(n) < n // 2)[None]  # (1, N)
        attention = torch.where(first == half, 1.0, 0.0).float()
        attention = attention / attention.sum(-1, keepdim=True)
        logits = torch.stack([first[:, 0].float() * 2 - 1, 1 - first[:, 0].float() * 2], -1) + self.dummy
        return ModelOutput(logits, attention, None, attention[:, None], attention).expand(k)


def test_hand_built_attention_gives_the_expected_shift_and_null_test(tiny_run, tiny_cohort, tiny_features, monkeypatch):
    real = tiny_run.model_for_fold(0)
    site = tiny_cohort.schema.names.index("site")
    fake = LoadedModel("persam", _SiteSteered(site), real.config, real.record_encoder, real.normaliser)
    monkeypatch.setattr(Run, "model_for_fold", lambda self, fold, device="cpu": fake)
    alterations = [parse_alteration(text, tiny_cohort.schema) for text in ("site=nodal", "site=extranodal", "sex=F", "sex=M")]
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, alterations, progress=False)
    shift = attention_shift(explanation.attention, explanation.predictions, k=2)  # each half holds at least 2 patches
    changed = shift[shift["field"] == "site"].merge(explanation.predictions[explanation.predictions.record == ORIGINAL][["slide_id"]], on="slide_id")
    moved = changed[changed["mass_moved"] > 0]  # the site value that differs from the patient's own
    assert len(moved) == len(tiny_cohort.slides)  # every slide has exactly one site value that is new
    np.testing.assert_allclose(moved[["jsd", "mass_moved"]], 1.0, atol=1e-6)
    assert (moved["topk_jaccard"] == 0).all() and moved["prediction_flipped"].all()
    assert (shift[shift["field"] == "sex"][["jsd", "mass_moved"]].to_numpy() == 0).all()
    summary = summarise_shift(shift).set_index("field")
    assert summary.loc["site", "jsd"] == pytest.approx(0.5) and summary.loc["sex", "jsd"] == pytest.approx(0)
    test = null_comparison(shift, ["sex"]).set_index("field").loc["site"]
    assert test["moves_more"] and test["p_value"] == pytest.approx(1 / 2 ** len(tiny_cohort.slides))  # all 8 paired differences positive
    assert null_comparison(shift, ["site"]).set_index("field").loc["sex", "moves_more"] == False  # noqa: E712


def test_truth_scores_oracle_uniform_and_random(tiny_cohort, tiny_features):
    from persam_lib.features.store import read_features

    truth = load_truth(tiny_cohort)
    assert truth.noise_fields == ("age", "sex")
    rows, expected = [], {}
    for slide_id in tiny_cohort.slides["slide_id"]:
        data = read_features(tiny_features / f"{slide_id}.h5")
        patient = tiny_cohort.slides.set_index("slide_id").loc[slide_id, "patient_id"]
        region = truth.region_for(tiny_cohort.clinical.loc[patient, "site"])
        inside = truth.region_fractions(slide_id, data.coords, data.patch_size)[region]
        expected[slide_id] = float(inside @ inside / inside.sum())
        rows.append(pd.DataFrame({"slide_id": slide_id, "x": data.coords[:, 0], "y": data.coords[:, 1], "size": data.patch_size, "record": ORIGINAL, "attention": inside / inside.sum()}))
    table = with_baselines(pd.concat(rows))  # oracle attention: proportional to how much of each patch is diagnostic
    oracle = truth_scores(table, tiny_cohort, truth).set_index("slide_id")
    uniform = truth_scores(table, tiny_cohort, truth, column="uniform").set_index("slide_id")
    random = truth_scores(table, tiny_cohort, truth, column="random").set_index("slide_id")
    np.testing.assert_allclose(oracle["mass_diagnostic"], pd.Series(expected).loc[oracle.index], atol=1e-9)
    assert (oracle["auroc"] == 1.0).all() and (uniform["auroc"] == 0.5).all()
    assert (oracle["mass_diagnostic"] > 2 * uniform["mass_diagnostic"]).all()
    np.testing.assert_allclose(uniform["mass_diagnostic"], uniform["uniform_diagnostic"], atol=1e-9)
    assert random["auroc"].mean() < 0.8 and (random["mass_diagnostic"] < oracle["mass_diagnostic"]).all()
    for _, part in table.groupby("slide_id"):  # the random map deals the oracle's own values
        np.testing.assert_allclose(np.sort(part["random"]), np.sort(part["attention"]))
    assert patch_auroc(np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0])) != patch_auroc(np.array([0.1, 0.2]), np.array([0.0, 1.0]))  # NaN vs 1.0


def test_report_metrics_and_figures(tiny_run, tiny_cohort, tiny_features, tmp_path):
    truth = load_truth(tiny_cohort)
    assert null_fields_of(tiny_cohort, truth) == ["site_permuted", "age", "sex"]
    with pytest.raises(ValueError, match="not fields of the cohort"):
        null_fields_of(tiny_cohort, truth, ["stage"])
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, progress=False)
    report = explanation_report(explanation, tiny_cohort, truth)
    assert set(report.shift_summary["map"]) == {"last layer"}  # one layer: rollout is the last layer's map, not repeated
    assert {"site", "ldh"} <= set(report.null_tests["field"]) and set(report.null_tests["null_field"]) == {"site_permuted", "age", "sex"}
    assert set(report.truth["attention"]) == {"persam", "uniform", "random"}  # one map: named by the model alone
    assert 0 <= report.moved["moved"] <= 1
    metrics = json.loads(write_metrics([report], tmp_path / "metrics.json").read_text())
    assert {"shift_summary", "null_tests", "truth", "shift_per_slide", "moved_to_new_region"} <= set(metrics["persam"])
    slides = list(tiny_cohort.slides["slide_id"][:1])
    written = write_figures(explanation, tiny_cohort, tiny_features, tmp_path / "figures", slides, truth)
    assert len(written) == 2 and all(p.stat().st_size > 10_000 for p in written)


def test_heatmaps_are_painted_at_thumbnail_resolution():
    from persam_lib.plots.figures import paint_patches

    coords = np.array([[0, 0], [512, 256]])
    canvas = paint_patches((8, 12), 64.0, coords, 256, np.array([0.25, 0.75]))  # a 256-px patch is 4 thumbnail pixels
    assert canvas.shape == (8, 12) and canvas.dtype == np.float32
    assert (canvas[0:4, 0:4] == 0.25).all() and (canvas[4:8, 8:12] == 0.75).all()
    assert np.isnan(canvas).sum() == 8 * 12 - 32
    edge = paint_patches((8, 12), 64.0, np.array([[640, 384]]), 256, np.array([1.0]))  # clipped at the border
    assert (edge[6:8, 10:12] == 1.0).all() and np.nansum(edge) == 4


def test_selectivity_is_the_diagnostic_share_of_the_mass_on_both_lesions():
    import pandas as pd

    from persam_lib.explain.summary import selectivity_ci, summarise_truth

    scores = pd.DataFrame({"slide_id": ["s1", "s2", "s3"], "record": [ORIGINAL] * 3, "mass_diagnostic": [0.6, 0.2, 0.0], "mass_other_region": [0.2, 0.0, 0.0], "auroc": [0.9, 0.8, 0.5]})
    value, low, high = selectivity_ci(scores)
    assert value == pytest.approx(0.8 / 1.0)  # a ratio of sums: s3, with nothing on either lesion, weighs nothing
    assert 0.0 <= low <= value <= high <= 1.0
    row = summarise_truth({"persam": scores}, "site").iloc[0]
    assert row["selectivity"] == pytest.approx(0.8) and row["mass_other_region"] == pytest.approx(0.2 / 3)
    assert np.isnan(selectivity_ci(scores.assign(mass_diagnostic=0.0, mass_other_region=0.0))[0])  # nothing on either lesion: undefined


def test_average_ranks_are_scipys_rankdata_with_ties():
    from scipy.stats import rankdata

    from persam_lib.explain.truth_scores import average_ranks

    rng = np.random.default_rng(0)
    for values in (rng.random(50), rng.integers(0, 5, 40).astype(float), np.zeros(7), np.array([0.3]), np.array([2.0, 1.0, 2.0, 1.0, 0.5])):
        np.testing.assert_array_equal(average_ranks(values), rankdata(values))


def test_truth_scores_and_shift_read_each_records_patches_by_position(tiny_run, tiny_cohort, tiny_features):
    """A record whose patch rows come in another order than the first record's is matched patch by
    patch: shuffling them changes no score and no shift."""
    from persam_lib.explain.truth_scores import truth_scores_of

    truth = load_truth(tiny_cohort)
    explanation = explain_run(tiny_run, tiny_cohort, tiny_features, progress=False)
    table = explanation.attention
    blocks = [rows if record == ORIGINAL else rows.sample(frac=1.0, random_state=0) for (_, record), rows in table.groupby(["slide_id", "record"], sort=False)]
    shuffled = pd.concat(blocks)  # every record's patch rows in another order, the records in theirs
    assert not shuffled.index.equals(table.index)
    expected = truth_scores_of(table, tiny_cohort, truth, ["attention"])["attention"]
    pd.testing.assert_frame_equal(truth_scores_of(shuffled.reset_index(drop=True), tiny_cohort, truth, ["attention"])["attention"], expected)
    pd.testing.assert_frame_equal(attention_shift(shuffled.reset_index(drop=True)), attention_shift(table))
