"""The published PersAM (persam_paper) in the registry, and its recipe as training options."""
import numpy as np
import pandas as pd
import pytest
import torch

from persam_lib.cli import main
from persam_lib.models import MODEL_INFO, create_model
from persam_lib.models.base import Batch, ModelConfig
from persam_lib.train.loop import TrainConfig, learning_rate, make_optimiser, sub_bags
from persam_lib.train.run import train_cross_validated

CONFIG = ModelConfig(feature_dim=10, n_classes=3, field_cardinalities=(0, 2, 3), record_groups=((0, 1), (2,)), d_model=32, n_heads=4)


def _batch(n=7, rows=2):
    mask = torch.ones(rows, n, dtype=torch.bool)
    mask[-1, n - 2 :] = False
    return Batch(torch.randn(rows, n, 10), mask, torch.zeros(rows, n, 2, dtype=torch.long), torch.tensor([[1, 1, 2], [0, 2, 0]])[:rows], torch.randn(rows, 3))


def test_outputs_per_class_maps_and_a_bag_map_that_sums_to_one():
    torch.manual_seed(0)
    out = create_model("persam_paper", CONFIG)(_batch(), rollout=True)
    assert out.logits.shape == (2, 3) and out.class_patch_attention.shape == (2, 3, 7)
    torch.testing.assert_close(out.patch_attention.sum(-1), torch.ones(2))
    torch.testing.assert_close(out.patch_attention_rollout.sum(-1), torch.ones(2))
    assert torch.all(out.patch_attention[1, 5:] == 0) and torch.all(out.class_patch_attention[1, :, 5:] == 0)  # padding
    top = out.class_patch_attention.amax(1)
    torch.testing.assert_close(out.patch_attention, top / (top.sum(-1, keepdim=True) + 1e-6))
    assert MODEL_INFO["persam_paper"].class_maps and not MODEL_INFO["persam"].class_maps


def test_padding_does_not_change_a_bag_and_the_record_changes_the_map():
    torch.manual_seed(0)
    model = create_model("persam_paper", CONFIG).eval()
    batch = _batch(rows=1)
    padded = Batch(torch.cat([batch.features, torch.randn(1, 3, 10)], 1), torch.cat([batch.patch_mask, torch.zeros(1, 3, dtype=torch.bool)], 1), torch.zeros(1, 10, 2, dtype=torch.long), batch.codes, batch.values)
    with torch.no_grad():
        a, b = model(batch), model(padded)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
        other = model(Batch(batch.features, batch.patch_mask, batch.coords, torch.tensor([[1, 2, 3]]), batch.values + 2))
    assert not torch.allclose(a.patch_attention, other.patch_attention)


def test_post_and_pre_norm_both_train():
    for norm in ("post", "pre"):
        model = create_model("persam_paper", ModelConfig(**{**CONFIG.to_dict(), "norm": norm}))
        loss = model(_batch()).logits.sum() + model(_batch()).class_patch_attention.sum()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sgd_with_nesterov_and_step_decay():
    config = TrainConfig.of(optimizer="sgd", lr=0.1, lr_step=10, momentum=0.9)
    optimiser = make_optimiser(torch.nn.Linear(2, 2), config)
    assert isinstance(optimiser, torch.optim.SGD) and optimiser.defaults["nesterov"] and optimiser.defaults["momentum"] == 0.9
    assert [learning_rate(config, e) for e in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="'optimizer' must be 'adamw' or 'sgd'. Got 'adam' instead"):
        TrainConfig.of(optimizer="adam")


def test_sub_bags_are_seeded_per_epoch_and_keep_slide_patient_and_label(tiny_cohort, tiny_features):
    from persam_lib.train.data import load_samples

    bags = load_samples(tiny_cohort, tiny_features)[:2]
    config = TrainConfig.of(subbag_size=5, subbags_per_slide=3)
    first, again, later = sub_bags(bags, config, 0, 3), sub_bags(bags, config, 0, 3), sub_bags(bags, config, 1, 3)
    assert len(first) == 6 and all(len(b.features) == 5 for b in first)
    assert [b.slide_id for b in first] == [bags[0].slide_id] * 3 + [bags[1].slide_id] * 3 and first[0].y == bags[0].y
    assert all(np.array_equal(x.features, y.features) for x, y in zip(first, again))
    assert not all(np.array_equal(x.features, y.features) for x, y in zip(first, later))
    rows = {tuple(r) for r in bags[0].features.tolist()}
    assert all(tuple(r) in rows for b in first[:3] for r in b.features.tolist())  # patches of that slide only


def test_the_published_recipe_trains_end_to_end(tiny_cohort, tiny_features, tmp_path):
    config = TrainConfig.of(
        model="persam_paper", n_folds=2, epochs=2, patience=3, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1,
        optimizer="sgd", lr=0.01, lr_step=1, attention_loss_weight=1.0, subbag_size=8, subbags_per_slide=2, subbags_at_test=3,
    )
    run = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "run", config, progress=False)
    predictions = run.predictions
    assert len(predictions) == 8 and np.isfinite(predictions[["prob_A", "prob_B"]].to_numpy()).all()
    np.testing.assert_allclose(predictions[["prob_A", "prob_B"]].sum(axis=1), 1, atol=1e-5)


def test_the_attention_loss_needs_a_model_with_class_maps(tiny_cohort, tiny_features, tmp_path, capsys):
    code = main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--out", str(tmp_path / "run"), "--model", "abmil", "--set", "attention_loss_weight=1"])
    assert code == 2 and "'attention_loss_weight' needs a model with one attention map per class (persam_paper); abmil has none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_explain_writes_one_column_per_class(tiny_cohort, tiny_features, tmp_path):
    from persam_lib.explain.attention import ExplainConfig, explain_run

    config = TrainConfig.of(model="persam_paper", n_folds=2, epochs=1, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1)
    run = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "run", config, progress=False)
    explanation = explain_run(run, tiny_cohort, tiny_features, [], ExplainConfig(per_class=True), progress=False)
    table = explanation.attention
    assert {"attention_class_A", "attention_class_B"} <= set(table.columns)
    sums = table.groupby(["slide_id", "record"])[["attention", "attention_class_A", "attention_class_B"]].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1, atol=1e-4)
    abmil = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "abmil", TrainConfig.of(model="abmil", n_folds=2, epochs=1, val_fraction=0.25, d_model=16), progress=False)
    with pytest.raises(ValueError, match="--per-class needs a model with one attention map per class \\(persam_paper\\)"):
        explain_run(abmil, tiny_cohort, tiny_features, [], ExplainConfig(per_class=True), progress=False)
