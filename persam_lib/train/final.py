"""A final model: one more fit, on every patient, for the number of epochs cross-validation chose.

Cross-validation estimates how well a recipe works; the models it leaves each saw 80% of the
patients. `train_final` fits the same recipe once on all of them for the median of the folds' best
epochs (each fold's lowest validation loss), since without a validation split nothing else can say
when to stop, and writes ``final/`` into the run (``checkpoint.pt``, ``history.csv`` and, last,
``final.json``). `persam predict --model final` scores with it. It has no out-of-fold estimate of
its own: the run's cross-validated metrics are the estimate.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from persam_lib.cohort.manifest import Cohort
from persam_lib.io.atomic import write_json_atomic, write_text_atomic
from persam_lib.models import create_model
from persam_lib.models.clinical import RecordEncoder
from persam_lib.train.checkpoint import LoadedModel, save_checkpoint
from persam_lib.train.data import FeatureNormaliser
from persam_lib.train.loop import fit
from persam_lib.train.run import Run, prepare_training

FINAL_DIR = "final"


def best_epochs(run: Run) -> list[int]:
    """Each finished fold's best epoch (1-based): the one with the lowest validation loss."""
    epochs = []
    for fold in run.finished_folds:
        history = pd.read_csv(run.path / f"fold_{fold}" / "history.csv")
        epochs.append(int(history.loc[history["val_loss"].idxmin(), "epoch"]))
    return epochs


def train_final(run: Run, cohort: Cohort, features_dir: str | Path | None, *, progress: bool = True) -> Path:
    """Fit the run's model on every patient of ``cohort`` for the median best epoch; return ``final/``."""
    folds = best_epochs(run)
    if not folds or len(folds) < run.config.n_folds:
        raise ValueError(f"{run.path}: {len(folds)} of {run.config.n_folds} folds finished; finish the cross-validation first (rerun the same persam train command)")
    epochs = max(int(np.median(folds)), 1)
    config = replace(run.config, epochs=epochs, patience=epochs + 1)
    prepared = prepare_training(cohort, features_dir, config)
    patients = sorted({b.patient_id for b in prepared.bags})
    torch.manual_seed(config.seed * 1000 + 999)
    encoder = RecordEncoder(cohort.schema).fit(prepared.records.loc[patients])
    normaliser = FeatureNormaliser.fit(prepared.bags)
    model, history = fit(create_model(config.model, prepared.model_config), prepared.bags, [], prepared.records, encoder, normaliser, config, prepared.model_config.n_classes)
    out = run.path / FINAL_DIR
    out.mkdir(exist_ok=True)
    (out / "final.json").unlink(missing_ok=True)  # written last: a final model is complete only with it
    write_text_atomic(out / "history.csv", history.to_csv(index=False))
    save_checkpoint(out / "checkpoint.pt", LoadedModel(config.model, model.cpu(), prepared.model_config, encoder, normaliser), extra={"fold": FINAL_DIR, "train_patients": patients})
    write_json_atomic(out / "final.json", {"epochs": epochs, "fold_best_epochs": folds, "patients": len(patients)})
    return out
