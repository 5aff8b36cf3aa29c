"""Cross-validated training into a run directory, and reading a run back.

A run directory holds ``config.json``, ``schema.json``, ``folds.csv``, one ``fold_<k>/`` per fold
(``checkpoint.pt``, ``history.csv``, ``predictions.csv``), and the pooled ``predictions.csv``
(exactly one held-out prediction per patient) and ``metrics.json``. A fold whose files exist is
skipped on rerun, so an interrupted `persam train` resumes.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from persam_lib.io.atomic import write_text_atomic
from persam_lib.cohort.manifest import Cohort
from persam_lib.models import create_model
from persam_lib.models.base import ModelConfig
from persam_lib.models.clinical import RecordEncoder
from persam_lib.train.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from persam_lib.train.data import Bag, FeatureNormaliser, ImageInput, load_samples
from persam_lib.train.folds import make_folds, split_validation
from persam_lib.train.distributed import Distributed
from persam_lib.train.loop import TrainConfig, evaluate, fit
from persam_lib.train.metrics import summarise


class Run:
    """A finished (or partly finished) run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json). Run `persam train` first.")
        self.config = TrainConfig(**json.loads((self.path / "config.json").read_text()))
        self.classes: list[str] = json.loads((self.path / "schema.json").read_text())["label"]["classes"]

    @property
    def inputs(self) -> dict:
        """The manifest and features directory the run was trained on (no features directory for images)."""
        path = self.path / "inputs.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "predictions.csv", dtype={"patient_id": str, "slide_id": str})

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def folds(self) -> pd.Series:
        return pd.read_csv(self.path / "folds.csv", dtype={"patient_id": str}).set_index("patient_id")["fold"]

    def history(self) -> pd.DataFrame:
        """Per-epoch training history of every fold, with a ``fold`` column."""
        return pd.concat([pd.read_csv(p).assign(fold=int(p.parent.name.split("_")[1])) for p in sorted(self.path.glob("fold_*/history.csv"))], ignore_index=True)

    def model_for_fold(self, fold: int, device: str | torch.device = "cpu") -> LoadedModel:
        return load_checkpoint(self.path / f"fold_{fold}" / "checkpoint.pt", device=device)


def train_cross_validated(
    cohort: Cohort, features_dir: str | Path | None, out_dir: str | Path, config: TrainConfig = TrainConfig(), *, progress: bool = True, distributed: Distributed = Distributed()
) -> Run:
    """Train ``config.model`` with patient-level stratified k-fold CV; every patient is predicted once.

    A slide cohort is read as the patch features in ``features_dir``; an image cohort
    (``cohort.modality == "images"``) is read from its image files at ``config.image_size``, and
    ``features_dir`` is ignored.

    Resumable at two levels: a finished fold (checkpoint and predictions written) is skipped, and
    an interrupted fold continues from its last finished epoch (``fold_<k>/resume.pt``). Under
    torchrun (``distributed``) every rank trains each fold on its share of the batches and rank 0
    writes the files.
    """
    out_dir = Path(out_dir)
    main = distributed.is_main
    previous = out_dir / "config.json"
    if previous.is_file() and TrainConfig(**json.loads(previous.read_text())) != config:
        raise ValueError(f"{out_dir} holds a run with a different configuration. Use a new --out directory, or delete it to retrain.")
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "config.json", json.dumps(asdict(config), indent=2))
        write_text_atomic(out_dir / "schema.json", json.dumps(cohort.schema.to_dict(), indent=2))
        features = None if cohort.modality == "images" or features_dir is None else str(Path(features_dir).resolve())
        write_text_atomic(out_dir / "inputs.json", json.dumps({"manifest": str(cohort.manifest_path), "features_dir": features, "modality": cohort.modality}, indent=2))

    bags = load_samples(cohort, features_dir, ImageInput(config.image_size, config.patch_size))
    patients = sorted({b.patient_id for b in bags})
    patient_labels = cohort.labels().loc[patients]
    folds = make_folds(patient_labels, config.n_folds, config.seed)
    if main:
        write_text_atomic(out_dir / "folds.csv", folds.rename_axis("patient_id").reset_index().to_csv(index=False))
    records = cohort.records()
    device = distributed.device(config.device)

    for fold in tqdm(range(config.n_folds), desc=f"train {config.model}", disable=not (progress and main)):
        fold_dir = out_dir / f"fold_{fold}"
        distributed.barrier()  # every rank sees the same finished folds
        if (fold_dir / "checkpoint.pt").is_file() and (fold_dir / "predictions.csv").is_file():
            continue
        if main:
            fold_dir.mkdir(exist_ok=True)
        distributed.barrier()
        torch.manual_seed(config.seed * 1000 + fold)
        test_ids = set(folds.index[folds == fold])
        train_ids, val_ids = split_validation(patient_labels[folds != fold], config.val_fraction, config.seed + fold)
        pick = lambda ids: [b for b in bags if b.patient_id in set(ids)]  # noqa: E731
        train_bags, val_bags, test_bags = pick(train_ids), pick(val_ids), pick(test_ids)
        encoder = RecordEncoder(cohort.schema).fit(records.loc[train_ids])
        normaliser = FeatureNormaliser.fit(train_bags)
        model_config = ModelConfig(
            feature_dim=bags[0].image.shape[0] if bags[0].image is not None else bags[0].features.shape[1], n_classes=len(cohort.schema.label.classes), field_cardinalities=encoder.cardinalities,
            d_model=config.d_model, n_heads=config.n_heads, n_layers=config.n_layers, dropout=config.dropout, use_position=config.use_position,
            patch_attention=config.patch_attention, checkpoint_activations=config.checkpoint_activations, radiomics_iterations=config.radiomics_iterations,
            input_kind=cohort.input_kind, image_size=config.image_size, patch_size=config.patch_size, ehr_stages=config.ehr_stages,
        )
        model = create_model(config.model, model_config)
        resume = fold_dir / "resume.pt"
        model, history = fit(model, train_bags, val_bags, records, encoder, normaliser, config, model_config.n_classes, resume_path=resume, distributed=distributed)
        if main:
            probs = evaluate(model, test_bags, records, encoder, normaliser, device)
            write_text_atomic(fold_dir / "history.csv", history.to_csv(index=False))
            save_checkpoint(fold_dir / "checkpoint.pt", LoadedModel(config.model, model.cpu(), model_config, encoder, normaliser), extra={"fold": fold, "train_patients": train_ids, "val_patients": val_ids})
            write_text_atomic(fold_dir / "predictions.csv", _prediction_table(test_bags, probs, fold, cohort.schema.label.classes).to_csv(index=False))
            resume.unlink(missing_ok=True)

    distributed.barrier()
    if main:
        predictions = pd.concat([pd.read_csv(out_dir / f"fold_{k}" / "predictions.csv", dtype={"patient_id": str, "slide_id": str}) for k in range(config.n_folds)], ignore_index=True)
        write_text_atomic(out_dir / "predictions.csv", predictions.to_csv(index=False))
        write_text_atomic(out_dir / "metrics.json", json.dumps(run_metrics(predictions, cohort, config), indent=2))
    distributed.barrier()
    return Run(out_dir)


def _prediction_table(bags: list[Bag], probs: np.ndarray, fold: int, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per patient: probabilities averaged over the patient's slides."""
    rows = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])
    rows["patient_id"] = [b.patient_id for b in bags]
    rows["slide_id"] = [b.slide_id for b in bags]
    rows["y"] = [b.y for b in bags]
    grouped = rows.groupby("patient_id", sort=True).agg({**{f"prob_{c}": "mean" for c in classes}, "slide_id": ";".join, "y": "first"}).reset_index()
    prob_cols = [f"prob_{c}" for c in classes]
    grouped["fold"] = fold
    grouped["y_true"] = [classes[i] for i in grouped["y"]]
    grouped["y_pred"] = [classes[i] for i in grouped[prob_cols].to_numpy().argmax(1)]
    return grouped[["patient_id", "slide_id", "fold", "y_true", "y_pred", *prob_cols]]


def run_metrics(predictions: pd.DataFrame, cohort: Cohort, config: TrainConfig) -> dict:
    """Pooled metrics with bootstrap CIs, per-fold metrics, and (with ground truth) split by region agreement."""
    classes = list(cohort.schema.label.classes)
    prob_cols = [f"prob_{c}" for c in classes]
    y = predictions["y_true"].map(classes.index).to_numpy()
    probs = predictions[prob_cols].to_numpy()
    out: dict = {"model": config.model, "overall": summarise(y, probs, seed=config.seed, classes=classes), "per_fold": {}}
    for fold, part in predictions.groupby("fold"):
        out["per_fold"][str(fold)] = {"n": int(len(part)), "accuracy": float((part["y_true"] == part["y_pred"]).mean())}
    regions = _regions_table(cohort)
    if regions is not None:
        merged = predictions.merge(regions[["patient_id", "disagree"]], on="patient_id", how="left")
        for name, part in merged.groupby("disagree"):
            key = "regions_disagree" if bool(name) else "regions_agree"
            out[key] = {"n": int(len(part)), "accuracy": float((part["y_true"] == part["y_pred"]).mean())}
    return out


def _regions_table(cohort: Cohort) -> pd.DataFrame | None:
    if cohort.truth_path is None:
        return None
    truth = yaml.safe_load(cohort.truth_path.read_text())
    if not truth.get("regions"):
        return None
    table = pd.read_csv(cohort.truth_path.parent / truth["regions"], dtype={"patient_id": str, "slide_id": str})
    table["disagree"] = table["disagree"].astype(str).str.lower() == "true"
    return table




def comparison_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: balanced accuracy and AUROC with 95% CIs, and accuracy split by region agreement."""
    rows = []
    for run in runs:
        m = run.metrics
        row = {"model": m["model"], **{k: v for k, v in m["overall"].items() if not isinstance(v, dict)}}
        row.update({f"f1_{c}": f for c, f in m["overall"].get("f1", {}).items()})
        for key in ("regions_agree", "regions_disagree"):
            if key in m:
                row[f"accuracy_{key}"] = m[key]["accuracy"]
        rows.append(row)
    return pd.DataFrame(rows)


def compare_models(
    cohort: Cohort, features_dir: str | Path | None, out_dir: str | Path, models: list[str], base: TrainConfig = TrainConfig(), *, progress: bool = True, workers: int = 1, distributed: Distributed = Distributed()
) -> pd.DataFrame:
    """Train every model with identical folds (same seed, same patients) and write ``comparison.csv``.

    With ``workers > 1`` (CPU only) models train in parallel processes of one thread each, which
    uses a small machine better than one process with several threads for models this size.
    Under torchrun (``distributed``) the models train one after the other, each on all ranks.
    """
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import replace
    from multiprocessing import get_context

    from persam_lib.models import available_models

    kind = cohort.input_kind
    unknown = [m for m in models if m not in available_models()]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}. Models for {cohort.modality}: {', '.join(available_models(kind))}.")
    elsewhere = [m for m in models if m not in available_models(kind)]
    if elsewhere:
        raise ValueError(f"Model(s) {elsewhere} do not run on this cohort's {cohort.modality}. Models for {cohort.modality}: {', '.join(available_models(kind))}.")
    if workers > 1 and distributed.enabled:
        raise ValueError("compare --workers N runs one process per model; under torchrun every rank already trains each model, so use --workers 1")
    out_dir = Path(out_dir)
    jobs = [(cohort.manifest_path, None if features_dir is None else str(features_dir), str(out_dir / m), replace(base, model=m)) for m in models]
    if workers > 1 and distributed.device(base.device).type == "cpu":
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_train_job, jobs))
    else:
        for manifest, features, run_dir, config in jobs:
            train_cross_validated(cohort, features, run_dir, config, progress=progress, distributed=distributed)
    runs = [Run(out_dir / m) for m in models]
    folds = [run.folds for run in runs]
    assert all(f.equals(folds[0]) for f in folds), "compare: runs were not trained on identical folds"
    table = comparison_table(runs)
    if distributed.is_main:
        write_text_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    return table


def _train_job(job: tuple[Path, str | None, str, TrainConfig]) -> str:
    """Train one model in a worker process (one thread: the workers share the cores)."""
    from persam_lib.cohort.manifest import load_manifest

    torch.set_num_threads(1)
    manifest, features, run_dir, config = job
    train_cross_validated(load_manifest(manifest), features, run_dir, config, progress=False)
    return run_dir
