"""Scoring patients a run never saw: the fold models as an ensemble, or one of them.

`predict_cohort(run, cohort, features_dir)` checks, before anything is scored, that the new cohort
can be read the way the run was trained — the same kind of samples, the run's clinical fields with
their types and categories (a category the run never saw is an error naming the field, value and
patient; a field the run does not know is ignored and said so; a field the run needs that the cohort
lacks is an error), and, for slides, features made with the run's extraction settings. Each patient
is then scored by every fold model (the mean of their probabilities) or by ``fold=k`` alone; the
table gives each class's probability, the predicted class and the spread across folds (the largest
minus the smallest probability of the predicted class). Where the new cohort has labels, `score`
gives the training metrics with bootstrap CIs: an external validation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from persam_lib.cohort.manifest import Cohort
from persam_lib.cohort.schema import FieldSchema
from persam_lib.features.consistency import check_feature_folder
from persam_lib.features.settings import describe, recorded_settings, setting_differences
from persam_lib.features.store import read_features
from persam_lib.train.checkpoint import LoadedModel
from persam_lib.train.data import ImageInput, collate_records, load_sample
from persam_lib.train.distributed import Distributed
from persam_lib.train.metrics import summarise
from persam_lib.train.run import Run


class PredictionInputError(ValueError):
    """The new cohort cannot be read the way the run was trained (the CLI exits 2)."""


@dataclass
class Predictions:
    """One row per sample: patient, each class's probability, the predicted class, the spread across
    folds, the folds that scored it; ``notes`` says what was ignored on the way."""

    table: pd.DataFrame
    classes: list[str]
    notes: list[str] = field(default_factory=list)


def check_schema(run: Run, cohort: Cohort) -> list[str]:
    """Raise `PredictionInputError` when ``cohort``'s record cannot be read by ``run``'s models;
    return notes on what will be ignored (fields the run does not read)."""
    trained = FieldSchema.from_dict(json.loads((run.path / "schema.json").read_text()))
    problems, notes = [], []
    have = {spec.name: spec for spec in cohort.schema.fields}
    for spec in trained.fields:
        if spec.name not in have:
            problems.append(f"the run reads the field '{spec.name}' ({spec.type}), which {cohort.manifest_path} does not declare: add it to the manifest and the clinical table (empty cells are 'missing')")
            continue
        new = have[spec.name]
        if new.type != spec.type:
            problems.append(f"field '{spec.name}' is {new.type} in {cohort.manifest_path} but {spec.type} in the run; declare it as the run did")
        elif spec.type == "categorical":
            unseen = sorted(set(cohort.clinical[spec.name].dropna().astype(str)) - set(spec.values))
            for value in unseen:
                patients = list(cohort.clinical.index[cohort.clinical[spec.name].astype(str) == value][:3])
                problems.append(f"field '{spec.name}': the value '{value}' (patients {', '.join(map(str, patients))}) is not one the run was trained on ({list(spec.values)}); "
                                "map it to one of them, or leave the cell empty to mark it missing")
    extra = [name for name in have if name not in {s.name for s in trained.fields}]
    if extra:
        notes.append(f"fields the run does not read are ignored: {', '.join(extra)}")
    if list(cohort.schema.label.classes) != list(trained.label.classes) and cohort.labelling != "unlabelled":
        problems.append(f"the cohort's classes {list(cohort.schema.label.classes)} are not the run's {list(trained.label.classes)} (in order); the predictions could not be scored against its labels")
    if problems:
        raise PredictionInputError("; ".join(problems))
    return notes


def check_features(run: Run, cohort: Cohort, features_dir: str | Path) -> None:
    """Raise `PredictionInputError` when the new features were not made like the run's (another
    encoder, weights, patch size, resolution, ...): a model reads only the features it was trained on."""
    folder = check_feature_folder(features_dir, list(cohort.slides["slide_id"]))
    trained = run.inputs.get("feature_settings")
    if trained is None:  # a run written before the settings were recorded: read one of its files, when still there
        source = run.inputs.get("features_dir")
        files = sorted(Path(source).glob("*.h5")) if source and Path(source).is_dir() else []
        if not files:
            return
        trained = recorded_settings(read_features(files[0], check_finite=False))
    differences = [d for d in setting_differences(trained, folder.settings) if d[0] != "library_version"]
    if differences:
        raise PredictionInputError(f"{features_dir}: the features were made with other settings than the run's ({describe(differences, 'the run', str(features_dir))}); "
                                   "extract them again with the run's settings")


def predict_cohort(run: Run, cohort: Cohort, features_dir: str | Path | None, *, fold: int | None = None, final: bool = False, device: str = "auto", temperature: float = 1.0) -> Predictions:
    """Every sample of ``cohort`` scored by the fold models' mean probability (or by ``fold``, or
    with ``final`` by the model fitted on every patient, `persam_lib.train.final`), their logits
    divided by ``temperature`` (1: as trained; see `persam_lib.predict.calibration`)."""
    if run.inputs.get("modality", "slides") != cohort.modality:
        raise PredictionInputError(f"{run.path} was trained on {run.inputs.get('modality', 'slides')} but {cohort.manifest_path} is a cohort of {cohort.modality}")
    notes = check_schema(run, cohort)
    folds = run.finished_folds
    if not folds:
        raise PredictionInputError(f"{run.path}: no finished fold to predict with; finish the training first (rerun the same persam train command)")
    if fold is not None:
        if fold not in folds:
            raise PredictionInputError(f"{run.path} has no finished fold {fold} (finished: {folds})")
        folds = [fold]
    if cohort.modality == "slides":
        if features_dir is None:
            raise PredictionInputError(f"{cohort.manifest_path}: a slide cohort is read as patch features; give their folder with --features")
        check_features(run, cohort, features_dir)
    target = Distributed().device(device)
    if final and fold is not None:
        raise PredictionInputError("give --fold or --model final, not both")
    models = {"final": run.final_model(device=target)} if final else {k: run.model_for_fold(k, device=target) for k in folds}
    records, rows, out = cohort.records(), cohort.sample_rows(), []
    for slide in cohort.slides.itertuples():
        bag = load_sample(cohort, slide.slide_id, features_dir, ImageInput.of(next(iter(models.values())).config), rows)  # read once: the fold models share its input settings
        probs = [_probabilities(loaded, bag, records.loc[[slide.patient_id]], target, temperature) for loaded in models.values()]
        p = np.stack(probs)  # (folds, C)
        mean = p.mean(0)
        best = int(mean.argmax())
        out.append({"slide_id": slide.slide_id, "patient_id": slide.patient_id, **{f"prob_{c}": float(v) for c, v in zip(run.classes, mean)},
                    "y_pred": run.classes[best], "fold_spread": float(p[:, best].max() - p[:, best].min()), "folds": ",".join(map(str, models))})
    return Predictions(pd.DataFrame(out), list(run.classes), notes)


def _probabilities(loaded: LoadedModel, bag, record: pd.DataFrame, device: torch.device, temperature: float) -> np.ndarray:
    batch = collate_records(bag, record, loaded.record_encoder, loaded.normaliser).to(device)
    loaded.model.eval()
    with torch.no_grad():
        logits = loaded.model(batch).logits.float()
    return torch.softmax(logits / temperature, -1)[0].cpu().numpy()


def by_patient(predictions: Predictions) -> pd.DataFrame:
    """One row per patient: the mean over the patient's samples (slides or images)."""
    prob = [f"prob_{c}" for c in predictions.classes]
    table = predictions.table.groupby("patient_id", sort=True).agg({**{c: "mean" for c in prob}, "fold_spread": "max"}).reset_index()
    table["y_pred"] = [predictions.classes[i] for i in table[prob].to_numpy().argmax(1)]
    return table


def labelled_outcomes(predictions: Predictions, cohort: Cohort) -> tuple[np.ndarray, np.ndarray] | None:
    """The labelled patients' labels (class indices) and mean probabilities (one row per patient,
    `by_patient`); a partly labelled cohort's other patients are predicted, never scored. None when
    no patient has a label."""
    table = by_patient(predictions)
    labelled = table[~table["patient_id"].isin(set(cohort.unlabelled))]
    if labelled.empty:
        return None
    return cohort.labels().loc[labelled["patient_id"]].to_numpy(), labelled[[f"prob_{c}" for c in predictions.classes]].to_numpy()


def score(predictions: Predictions, cohort: Cohort, seed: int = 0) -> dict | None:
    """The training metrics (balanced accuracy, AUROC, F1 per class, confusion, with bootstrap CIs)
    of the labelled patients' predictions; None when the cohort has no label."""
    outcomes = labelled_outcomes(predictions, cohort)
    return None if outcomes is None else summarise(*outcomes, seed=seed, classes=predictions.classes)

