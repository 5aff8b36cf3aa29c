import numpy as np
import pandas as pd
import pytest
import torch

from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec
from persam_lib.models import ModelConfig, available_models, create_model
from persam_lib.models.clinical import RecordEncoder
from persam_lib.train.data import Bag, FeatureNormaliser
from persam_lib.train.folds import make_folds
from persam_lib.train.loop import TrainConfig, evaluate, fit
from persam_lib.train.metrics import bootstrap_ci, macro_auroc
from persam_lib.train.run import Run


def _synthetic_task(n_patients: int, seed: int):
    """Label = which of two patch types is 'hot', where the record field says which type to look at."""
    rng = np.random.default_rng(seed)
    bags, rows = [], []
    for i in range(n_patients):
        site = rng.choice(["a", "b"])
        y = int(rng.integers(0, 2))
        n = 30
        feats = rng.normal(0, 1, (n, 4)).astype(np.float32)
        kind = rng.integers(0, 2, n)  # patch type a (0) or b (1), marked in feature 0
        feats[:, 0] = kind * 2 - 1
        looked_at = kind == (0 if site == "a" else 1)
        other = rng.integers(0, 2)
        feats[:, 1] = np.where(looked_at, y * 2 - 1, other * 2 - 1) + rng.normal(0, 0.3, n)
        pid = f"P{i:03d}"
        grid = np.stack([np.arange(n) % 6, np.arange(n) // 6], 1) * 256  # a 6 x 5 patch grid
        bags.append(Bag(f"S{i:03d}", pid, feats, grid.astype(np.int64), 256, y))
        rows.append({"patient_id": pid, "site": site, "marker": float(y + rng.normal(0, 0.6))})  # a weak record-only cue
    schema = FieldSchema((FieldSpec("site", "categorical", ("a", "b")), FieldSpec("marker", "numeric")), LabelSpec("y", ("0", "1")))
    return bags, pd.DataFrame(rows).set_index("patient_id"), schema


@pytest.mark.parametrize("name", available_models("features"))
def test_each_model_learns_above_chance(name):
    torch.manual_seed(0)
    bags, records, schema = _synthetic_task(160, seed=1)
    train, val, test = bags[:100], bags[100:120], bags[120:]
    encoder = RecordEncoder(schema).fit(records)
    normaliser = FeatureNormaliser.fit(train)
    config = TrainConfig(model=name, epochs=40, patience=40, batch_size=8, lr=3e-3)  # dropout is the model config's
    model = create_model(name, ModelConfig(feature_dim=4, n_classes=2, field_cardinalities=encoder.cardinalities, d_model=16, n_heads=2, n_layers=2, dropout=0.0))
    model, history = fit(model, train, val, records, encoder, normaliser, config, 2)
    probs = evaluate(model, test, records, encoder, normaliser, torch.device("cpu"))
    accuracy = (probs.argmax(1) == np.array([b.y for b in test])).mean()
    assert accuracy > 0.65, accuracy  # chance is 0.5; image alone gives ~0.75, the record alone ~0.8
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_persam_uses_the_record_where_image_only_cannot():
    torch.manual_seed(0)
    bags, records, schema = _synthetic_task(240, seed=2)
    train, val, test = bags[:160], bags[160:190], bags[190:]
    encoder = RecordEncoder(schema).fit(records)
    normaliser = FeatureNormaliser.fit(train)
    config = TrainConfig(model="persam", epochs=60, patience=60, batch_size=8, lr=3e-3)
    model = create_model("persam", ModelConfig(feature_dim=4, n_classes=2, field_cardinalities=encoder.cardinalities, d_model=16, n_heads=2, n_layers=2, dropout=0.0))
    model, _ = fit(model, train, val, records, encoder, normaliser, config, 2)
    probs = evaluate(model, test, records, encoder, normaliser, torch.device("cpu"))
    assert (probs.argmax(1) == np.array([b.y for b in test])).mean() > 0.85


def test_folds_never_split_a_patient_and_are_stratified():
    labels = pd.Series([0] * 30 + [1] * 20, index=[f"P{i}" for i in range(50)])
    folds = make_folds(labels, 5, seed=0)
    assert folds.index.is_unique and set(folds) == set(range(5))
    per_fold = pd.crosstab(folds, labels)
    assert (per_fold[0] == 6).all() and (per_fold[1] == 4).all()
    with pytest.raises(ValueError, match="smallest class"):
        make_folds(labels.iloc[:33], 5)


def test_metrics_and_bootstrap():
    y = np.array([0, 0, 1, 1] * 10)
    perfect = np.stack([1 - y, y], 1).astype(float)
    assert macro_auroc(y, perfect) == 1.0
    est, low, high = bootstrap_ci(y, perfect * 0.5 + 0.25, "balanced_accuracy")
    assert est == low == high == 1.0
    noisy = np.random.default_rng(0).random((40, 2))
    est, low, high = bootstrap_ci(y, noisy, "auroc")
    assert low <= est <= high and high - low > 0.05


def test_run_directory_contract(tiny_run: Run, tiny_cohort):
    predictions = tiny_run.predictions
    assert list(predictions.columns) == ["patient_id", "slide_id", "fold", "y_true", "y_pred", "prob_A", "prob_B"]
    assert sorted(predictions["patient_id"]) == sorted(tiny_cohort.clinical.index)  # each patient exactly once
    np.testing.assert_allclose(predictions[["prob_A", "prob_B"]].sum(axis=1), 1, atol=1e-5)
    folds = tiny_run.folds
    for fold in range(2):  # a patient's fold model never trained on that patient
        import torch as _t

        state = _t.load(tiny_run.path / f"fold_{fold}" / "checkpoint.pt", weights_only=False)
        trained_on = set(state["extra"]["train_patients"]) | set(state["extra"]["val_patients"])
        assert trained_on.isdisjoint(folds.index[folds == fold])
    metrics = tiny_run.metrics
    assert {"balanced_accuracy", "balanced_accuracy_low", "balanced_accuracy_high", "auroc"} <= set(metrics["overall"])
    assert "regions_disagree" in metrics or "regions_agree" in metrics
    assert set(metrics["overall"]["f1"]) == {"A", "B"} and len(metrics["overall"]["confusion_matrix"]["rows_true_columns_predicted"]) == 2
    loaded = tiny_run.model_for_fold(0)
    assert loaded.config.d_model == 16 and loaded.record_encoder.schema == tiny_cohort.schema


def test_training_resumes_and_is_deterministic(tiny_cohort, tiny_features, tmp_path):
    from persam_lib.train.run import train_cross_validated

    config = TrainConfig.of(model="persam", n_folds=2, epochs=2, patience=2, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1)
    a = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "a", config, progress=False)
    b = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "b", config, progress=False)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    # an interrupted run (fold 1 missing) resumes: fold 0 is kept as it was
    stamp = (tmp_path / "a" / "fold_0" / "checkpoint.pt").stat().st_mtime_ns
    for f in (tmp_path / "a" / "fold_1").iterdir():
        f.unlink()
    again = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "a", config, progress=False)
    assert (tmp_path / "a" / "fold_0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.predictions, b.predictions)
    with pytest.raises(ValueError, match="different configuration"):
        train_cross_validated(tiny_cohort, tiny_features, tmp_path / "a", TrainConfig(model="abmil", n_folds=2), progress=False)


class _Killed(Exception):
    """Stands for the process being killed."""


def test_an_interrupted_fold_resumes_from_its_last_finished_epoch(tiny_cohort, tiny_features, tmp_path, monkeypatch):
    from persam_lib.train import loop
    from persam_lib.train.run import train_cross_validated

    config = TrainConfig.of(model="persam", n_folds=2, epochs=4, patience=4, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1)  # dropout on: RNG state matters
    whole = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "whole", config, progress=False)
    real_save = loop._LoopState.save
    saved_epochs, armed = [], [True]

    def save_then_die(self, *args):
        real_save(self, *args)
        saved_epochs.append(self.epoch)
        if armed[0] and len(saved_epochs) == 2:
            armed[0] = False
            raise _Killed  # killed right after epoch 2 of fold 0 was saved

    monkeypatch.setattr(loop._LoopState, "save", save_then_die)
    monkeypatch.setattr(loop, "RESUME_EVERY_S", 0.0)  # save at every epoch's end
    with pytest.raises(_Killed):
        train_cross_validated(tiny_cohort, tiny_features, tmp_path / "cut", config, progress=False)
    fold0 = tmp_path / "cut" / "fold_0"
    assert (fold0 / "resume.pt").is_file() and not (fold0 / "checkpoint.pt").exists()
    saved_epochs.clear()
    resumed = train_cross_validated(tiny_cohort, tiny_features, tmp_path / "cut", config, progress=False)
    assert saved_epochs[:2] == [3, 4]  # fold 0 went on from epoch 3, not from scratch
    pd.testing.assert_frame_equal(resumed.predictions, whole.predictions)  # and ended where the uninterrupted run did
    pd.testing.assert_frame_equal(pd.read_csv(fold0 / "history.csv"), pd.read_csv(tmp_path / "whole" / "fold_0" / "history.csv"))
    assert not list((tmp_path / "cut").glob("fold_*/resume.pt"))


def test_the_resume_file_is_written_at_most_every_resume_every_s(tiny_cohort, tiny_features, tmp_path, monkeypatch):
    """Saving the loop state costs a tenth of a small model's epoch, so it is written once
    `RESUME_EVERY_S` has passed since the last save, not at every epoch's end."""
    from persam_lib.train import loop
    from persam_lib.train.run import train_cross_validated

    saved = []
    real_save = loop._LoopState.save
    monkeypatch.setattr(loop._LoopState, "save", lambda self, *args: (saved.append(self.epoch), real_save(self, *args)))
    config = TrainConfig.of(model="abmil", n_folds=2, epochs=4, patience=4, val_fraction=0.25, d_model=16)
    clock = iter(range(0, 10_000, 7))  # every reading of the clock is 7 s after the one before
    monkeypatch.setattr(loop, "monotonic", lambda: next(clock))
    monkeypatch.setattr(loop, "RESUME_EVERY_S", 10.0)
    train_cross_validated(tiny_cohort, tiny_features, tmp_path / "run", config, progress=False)
    assert saved == [2, 4, 2, 4]  # per fold: 7 s after the start (no save), 14 (save), then 7 and 14 again
    saved.clear()
    monkeypatch.setattr(loop, "RESUME_EVERY_S", 0.0)
    train_cross_validated(tiny_cohort, tiny_features, tmp_path / "every", config, progress=False)
    assert saved == [1, 2, 3, 4, 1, 2, 3, 4]


def test_fold_batches_encode_each_record_once_and_standardise_every_batch(monkeypatch):
    """`FoldBatches` encodes each patient's record once, not every step; its batches, of whole bags
    or of sub-bags cut from them, hold the bags standardised and padded and their records encoded."""
    from persam_lib.train.data import FoldBatches
    from persam_lib.train.loop import sub_bags

    bags, records, schema = _synthetic_task(12, seed=3)
    bags = [Bag(b.slide_id, b.patient_id, b.features[: 10 + i], b.coords[: 10 + i], b.patch_size, b.y) for i, b in enumerate(bags)]  # uneven: padding
    records.loc["P002", "marker"] = np.nan  # a missing value
    encoder = RecordEncoder(schema).fit(records)
    normaliser = FeatureNormaliser.fit(bags)
    encoded = []
    real_encode = RecordEncoder.encode
    monkeypatch.setattr(RecordEncoder, "encode", lambda self, table: (encoded.append(len(table)), real_encode(self, table))[1])
    batches = FoldBatches(bags, records, encoder, normaliser)
    chosen = [bags[i] for i in (5, 2, 9)]
    config = TrainConfig(subbag_size=8, subbags_per_slide=2)
    for part in (chosen, sub_bags(chosen, config, 3, 2)):
        batch = batches.batch(part)
        n = max(len(b.features) for b in part)
        expected = np.zeros((len(part), n, 4), dtype=np.float32)
        for i, b in enumerate(part):
            expected[i, : len(b.features)] = (b.features - normaliser.mean) / normaliser.std
        codes, values = real_encode(encoder, records.loc[[b.patient_id for b in part]])
        assert torch.equal(batch.features, torch.from_numpy(expected))
        assert torch.equal(batch.patch_mask, torch.from_numpy(np.arange(n)[None] < np.array([len(b.features) for b in part])[:, None]))
        assert torch.equal(batch.coords[0, : len(part[0].coords)], torch.from_numpy(part[0].coords)) and not batch.coords[0, len(part[0].coords) :].any()
        assert torch.equal(batch.codes, codes) and torch.equal(batch.values, values)
    assert encoded == [12]  # every patient once, when the batches were set up
    assert batches.batch([bags[2]]).codes[0, 1] == 0  # the missing marker is coded missing


def test_fold_batches_standardise_images_channel_by_channel():
    from persam_lib.train.data import FoldBatches

    _, records, schema = _synthetic_task(4, seed=4)
    rng = np.random.default_rng(0)
    images = [Bag(f"I{i}", f"P{i:03d}", None, np.zeros((4, 2), np.int64), 8, i % 2, image=rng.random((3, 16, 16))) for i in range(4)]  # float64 pixels
    encoder = RecordEncoder(schema).fit(records)
    normaliser = FeatureNormaliser.fit(images)
    batch = FoldBatches(images, records, encoder, normaliser).batch(images[::-1])
    expected = np.stack([(b.image - normaliser.mean[:, None, None]) / normaliser.std[:, None, None] for b in images[::-1]]).astype(np.float32)
    assert batch.images.dtype == torch.float32 and torch.equal(batch.images, torch.from_numpy(expected))
    assert torch.equal(batch.codes, encoder.encode(records.loc[[b.patient_id for b in images[::-1]]])[0])


def test_the_vectorised_bootstrap_gives_the_resample_by_resample_values():
    """Every resample scored at once equals scoring each with scikit-learn, ties and a third class
    included (the book computes two of these intervals per run)."""
    from sklearn.metrics import balanced_accuracy_score

    from persam_lib.train.metrics import bootstrap_ci, macro_auroc

    rng = np.random.default_rng(4)
    for classes in (2, 3):
        y = rng.integers(0, classes, 40)
        probs = rng.dirichlet(np.ones(classes), 40).round(1)  # rounded: many ties
        probs /= probs.sum(1, keepdims=True)
        for metric, fn in (("balanced_accuracy", lambda yy, pp: balanced_accuracy_score(yy, pp.argmax(1))), ("auroc", macro_auroc)):
            draws = np.random.default_rng(0).integers(0, 40, (200, 40))
            expected = [fn(y[i], probs[i]) for i in draws if len(np.unique(y[i])) > 1]
            est, low, high = bootstrap_ci(y, probs, metric, n_boot=200, seed=0)
            assert est == pytest.approx(fn(y, probs))
            assert (low, high) == pytest.approx(tuple(np.quantile(expected, [0.025, 0.975])), abs=1e-12), (classes, metric)
