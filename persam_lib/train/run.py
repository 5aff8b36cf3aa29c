"""Cross-validated training into a run directory, and reading a run back.

A run directory holds ``config.json``, ``schema.json``, ``inputs.json``, ``folds.csv``, one
``fold_<k>/`` per fold (``fold.json``, ``checkpoint.pt``, ``history.csv``, ``predictions.csv`` and,
written last, ``done.json``), and the pooled ``predictions.csv`` (exactly one held-out prediction
per patient) and ``metrics.json``, written after every fold is done.

A run directory is never half-valid: everything is checked (model, options, device, cohort,
features) before the directory is created, every file is written atomically, a fold counts as
finished only when its ``done.json`` marker exists and records the same inputs, and a fold whose
held-out probabilities are not finite writes nothing. So an interrupted or failed `persam train`
resumes: a rerun redoes exactly the folds that did not finish. One process at a time trains a
run directory (`persam_lib.io.locks.output_lock`); a second stops at once.
"""
from __future__ import annotations

from collections.abc import Iterable

import hashlib
import json
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from persam_lib.io.atomic import dumps_strict, remove_stale_temps, write_json_atomic, write_text_atomic
from persam_lib.io.locks import output_lock
from persam_lib.cohort.manifest import Cohort
from persam_lib.cohort.sanity import check_trainable
from persam_lib.cohort.truth import GroundTruth, load_truth
from persam_lib.models import MODEL_INFO, available_models, class_map_models, check_settings, create_model, settings_for
from persam_lib.models.base import ModelConfig
from persam_lib.models.clinical import RecordEncoder
from persam_lib.features.settings import recorded_settings
from persam_lib.features.store import feature_path, read_features
from persam_lib.models.record_groups import group_indices
from persam_lib.train.recipes import with_recipe
from persam_lib.train.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from persam_lib.train.data import Bag, FeatureNormaliser, ImageInput, load_samples
from persam_lib.train.folds import make_folds, split_validation
from persam_lib.train.distributed import Distributed
from persam_lib.train.loop import TrainConfig, evaluate, fit
from persam_lib.train.metrics import summarise

DONE_MARKER = "done.json"  # written last in a fold's folder: the fold is finished
FOLD_FILES = ("history.csv", "checkpoint.pt", "predictions.csv")


class Run:
    """A finished (or partly finished) run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json). Run `persam train` first.")
        self.config = TrainConfig.from_dict(json.loads((self.path / "config.json").read_text()))
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
        """``metrics.json``; its ``null`` values (metrics that are undefined, e.g. AUROC on one
        class) come back as NaN, so formatting and tables treat them as numbers."""
        path = self.path / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run has not finished (no metrics.json). Run the same `persam train` command again to finish it.")
        return _null_to_nan(json.loads(path.read_text()))

    @property
    def folds(self) -> pd.Series:
        return pd.read_csv(self.path / "folds.csv", dtype={"patient_id": str}).set_index("patient_id")["fold"]

    @property
    def finished_folds(self) -> list[int]:
        """The folds whose ``done.json`` marker exists (written after all their files)."""
        return sorted(int(p.parent.name.split("_")[1]) for p in self.path.glob(f"fold_*/{DONE_MARKER}"))

    def history(self) -> pd.DataFrame:
        """Per-epoch training history of every fold, with a ``fold`` column."""
        return pd.concat([pd.read_csv(p).assign(fold=int(p.parent.name.split("_")[1])) for p in sorted(self.path.glob("fold_*/history.csv"))], ignore_index=True)

    def model_for_fold(self, fold: int, device: str | torch.device = "cpu") -> LoadedModel:
        return load_checkpoint(self.path / f"fold_{fold}" / "checkpoint.pt", device=device)

    @property
    def has_final(self) -> bool:
        """Whether ``persam train --final`` finished a model on every patient (``final/final.json``)."""
        return (self.path / "final" / "final.json").is_file()

    def final_model(self, device: str | torch.device = "cpu") -> LoadedModel:
        """The model fitted on every patient (`persam_lib.train.final`)."""
        if not self.has_final:
            raise FileNotFoundError(f"{self.path}: no final model; train one with the same persam train command and --final")
        return load_checkpoint(self.path / "final" / "checkpoint.pt", device=device)


def _null_to_nan(value):
    """JSON ``null`` back to NaN, in nested dicts and lists (metrics.json writes NaN as null)."""
    if isinstance(value, dict):
        return {k: _null_to_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_null_to_nan(v) for v in value]
    return math.nan if value is None else value


def check_models(cohort: Cohort, models: list[str]) -> None:
    """Raise a ValueError unless every name in ``models`` is a registered model that runs on the
    cohort's input (slides' patch features or 2-D images); the message lists the valid ones."""
    kind = cohort.input_kind
    valid = ", ".join(available_models(kind))
    unknown = [m for m in models if m not in available_models()]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}. Models for {cohort.modality}: {valid}.")
    elsewhere = [m for m in models if m not in available_models(kind)]
    if elsewhere:
        raise ValueError(f"Model(s) {elsewhere} do not run on this cohort's {cohort.modality}. Models for {cohort.modality}: {valid}.")


@dataclass
class TrainingInputs:
    """Everything `train_cross_validated` checked and read before it writes a single file."""

    bags: list[Bag]
    patient_labels: pd.Series
    folds: pd.Series
    records: pd.DataFrame
    model_config: ModelConfig
    device: torch.device
    warnings: list[str]
    truth: GroundTruth | None = None  # read once here; the region-agreement metrics use it
    feature_settings: dict | None = None  # how the slides' features were made (`persam_lib.features.settings`); `persam predict` checks new features against it


def prepare_training(cohort: Cohort, features_dir: str | Path | None, config: TrainConfig, distributed: Distributed = Distributed()) -> TrainingInputs:
    """Check and read the inputs of a training run, writing nothing.

    In this order, each a ValueError (or FileNotFoundError) that says what to do: the model name
    (for the cohort's input kind), the model settings it would ignore (`check_settings`), the
    device, the cohort (`check_trainable`), every sample (slides: `check_feature_folder` —
    present, consistent and finite; images: readable), the folds, and the model itself, built
    once from the `ModelConfig` (the settings plus what the data decides; the checkpoint stores it).
    """
    check_models(cohort, [config.model])
    check_settings(config.model, config.model_settings, cohort.input_kind)
    if config.attention_loss_weight and not MODEL_INFO[config.model].class_maps:
        raise ValueError(f"The training option 'attention_loss_weight' needs a model with one attention map per class ({', '.join(class_map_models())}); {config.model} has none. Remove it, or choose such a model.")
    device = distributed.device(config.device)
    warnings = check_trainable(cohort, config.n_folds)
    truth = load_truth(cohort)  # a broken ground-truth file fails now, not after the last fold
    bags = load_samples(cohort, features_dir, ImageInput.of(config.model_settings))  # slides: `check_feature_folder`
    feature_settings = recorded_settings(read_features(feature_path(features_dir, bags[0].slide_id), check_finite=False)) if cohort.modality == "slides" and bags else None
    patients = sorted({b.patient_id for b in bags})
    patient_labels = cohort.labels().loc[patients]
    folds = make_folds(patient_labels, config.n_folds, config.seed)
    encoder = RecordEncoder(cohort.schema)  # the cardinalities come from the schema alone
    model_config = ModelConfig.from_settings(
        config.model_settings, feature_dim=bags[0].image.shape[0] if bags[0].image is not None else bags[0].features.shape[1],
        n_classes=len(cohort.schema.label.classes), field_cardinalities=encoder.cardinalities, input_kind=cohort.input_kind,
        record_groups=group_indices(cohort.schema.names, cohort.schema.record_groups()),
    )
    create_model(config.model, model_config)  # a model that cannot be built for these inputs fails here, not in a fold
    return TrainingInputs(bags, patient_labels, folds, cohort.records(), model_config, device, warnings, truth, feature_settings)


def _sample_digests(bags: list[Bag]) -> dict[str, str]:
    """A content digest of every sample (ids, label, coordinates and the features or pixels)."""
    out = {}
    for b in bags:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{b.slide_id}|{b.patient_id}|{b.y}|{b.patch_size}|".encode())
        data = b.image if b.image is not None else b.features
        h.update(f"{data.dtype}{data.shape}".encode())
        h.update(np.ascontiguousarray(data).view(np.uint8))
        h.update(np.ascontiguousarray(b.coords).view(np.uint8))
        out[b.slide_id] = h.hexdigest()
    return out


def _fold_digest(config: TrainConfig, ids: dict[str, list[str]], bags: list[Bag], samples: dict[str, str], records: pd.DataFrame) -> str:
    """What a fold's results depend on: the configuration, its patients and their samples and records."""
    h = hashlib.sha256(dumps_strict(config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps({k: sorted(v) for k, v in ids.items()}, sort_keys=True).encode())
    for b in sorted(bags, key=lambda b: b.slide_id):
        h.update(samples[b.slide_id].encode())
    patients = sorted({p for v in ids.values() for p in v})
    h.update(records.loc[patients].to_csv().encode())
    return h.hexdigest()


def fold_is_done(fold_dir: Path, digest: str) -> bool:
    """A fold is finished when its marker exists, records ``digest`` (the same inputs) and its files exist."""
    marker = fold_dir / DONE_MARKER
    if not marker.is_file() or not all((fold_dir / name).is_file() for name in FOLD_FILES):
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == digest
    except (ValueError, AttributeError):
        return False


def train_cross_validated(
    cohort: Cohort, features_dir: str | Path | None, out_dir: str | Path, config: TrainConfig = TrainConfig(), *, progress: bool = True, distributed: Distributed = Distributed()
) -> Run:
    """Train ``config.model`` with patient-level stratified k-fold CV; every patient is predicted once.

    A slide cohort is read as the patch features in ``features_dir``; an image cohort
    (``cohort.modality == "images"``) is read from its image files at ``config.model_settings.image_size``, and
    ``features_dir`` is ignored.

    Nothing is written until every input is checked (`prepare_training`): a bad model, option,
    device, cohort or feature file leaves no run directory. Resumable at two levels: a finished
    fold (its ``done.json`` marker, written after its files, for the same inputs) is skipped, and
    an interrupted fold continues from its last finished epoch (``fold_<k>/resume.pt``). The run
    directory is locked while training (a second process gets `FolderBusyError`). Under torchrun
    (``distributed``) every rank trains each fold on its share of the batches and rank 0 holds
    the lock and writes the files.
    """
    out_dir = Path(out_dir)
    main = distributed.is_main
    _check_same_config(out_dir, config)  # fails fast, before the inputs are read
    prepared = prepare_training(cohort, features_dir, config, distributed)
    for warning in prepared.warnings if main and progress else ():
        tqdm.write(f"train {config.model}: warning: {warning}", file=sys.stderr)
    bags, patient_labels, folds, records = prepared.bags, prepared.patient_labels, prepared.folds, prepared.records
    samples = _sample_digests(bags)
    with output_lock(out_dir, "train") if main else nullcontext():
        _check_same_config(out_dir, config)  # again, now that no one else can write it
        plan = []
        for fold in range(config.n_folds):
            test_ids = sorted(folds.index[folds == fold])
            train_ids, val_ids = split_validation(patient_labels[folds != fold], config.val_fraction, config.seed + fold)
            ids = {"train": list(train_ids), "val": list(val_ids), "test": test_ids}  # together: every patient
            plan.append((fold, ids, _fold_digest(config, ids, bags, samples, records)))
        todo = [fold for fold, _, digest in plan if not fold_is_done(out_dir / f"fold_{fold}", digest)]
        distributed.barrier()  # every rank has seen the same finished folds before rank 0 writes
        if main:
            remove_stale_temps(out_dir)
            if todo:  # the pooled results no longer describe the folds: remove them until they are rewritten
                for name in ("predictions.csv", "metrics.json"):
                    (out_dir / name).unlink(missing_ok=True)
            write_json_atomic(out_dir / "config.json", config.to_dict())
            write_json_atomic(out_dir / "schema.json", cohort.schema.to_dict())
            features = None if cohort.modality == "images" or features_dir is None else str(Path(features_dir).resolve())
            write_json_atomic(out_dir / "inputs.json", {"manifest": str(cohort.manifest_path), "features_dir": features, "modality": cohort.modality, "feature_settings": prepared.feature_settings})
            write_text_atomic(out_dir / "folds.csv", folds.rename_axis("patient_id").reset_index().to_csv(index=False))

        for fold, ids, digest in tqdm(plan, desc=f"train {config.model}", disable=not (progress and main)):
            if fold not in todo:
                continue
            _train_fold(cohort, out_dir / f"fold_{fold}", fold, ids, digest, prepared, config, distributed)

        distributed.barrier()
        if main:
            predictions = pd.concat([pd.read_csv(out_dir / f"fold_{k}" / "predictions.csv", dtype={"patient_id": str, "slide_id": str}) for k in range(config.n_folds)], ignore_index=True)
            write_text_atomic(out_dir / "predictions.csv", predictions.to_csv(index=False))
            write_json_atomic(out_dir / "metrics.json", run_metrics(predictions, cohort, config, prepared.truth))  # last: the run is finished
        distributed.barrier()
    return Run(out_dir)


def _check_same_config(out_dir: Path, config: TrainConfig) -> None:
    """A run directory is resumed only with the configuration it was started with."""
    previous = out_dir / "config.json"
    if not previous.is_file():
        return
    try:
        recorded = TrainConfig.from_dict(json.loads(previous.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{previous}: not a readable run configuration ({err}). Use a new --out directory, or delete it to retrain.") from None
    if recorded != config:
        changed = [k for k, v in config.to_dict().items() if recorded.to_dict().get(k) != v]
        raise ValueError(f"{out_dir} holds a run with a different configuration ({', '.join(changed)} differ). Use a new --out directory, or delete it to retrain.")


def _train_fold(cohort: Cohort, fold_dir: Path, fold: int, ids: dict[str, list[str]], digest: str, prepared: TrainingInputs, config: TrainConfig, distributed: Distributed) -> None:
    """Train, check and write one fold; its ``done.json`` is written only after everything else.

    A resume file left by an interrupted attempt on other inputs (``fold.json`` records them) is
    discarded. Held-out probabilities that are not finite (a diverged model) raise a ValueError
    naming the fold and the samples, and nothing of the fold is written.
    """
    main = distributed.is_main
    resume = fold_dir / "resume.pt"
    if main:
        fold_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(fold_dir)
        (fold_dir / DONE_MARKER).unlink(missing_ok=True)
        started = fold_dir / "fold.json"
        try:
            same_inputs = json.loads(started.read_text()).get("digest") == digest if started.is_file() else False
        except ValueError:
            same_inputs = False
        if not same_inputs:
            resume.unlink(missing_ok=True)
        write_json_atomic(started, {"fold": fold, "digest": digest, "patients": ids})
    distributed.barrier()
    bags, records, model_config = prepared.bags, prepared.records, prepared.model_config
    train_bags, val_bags, test_bags = (_bags_of(bags, ids[part]) for part in ("train", "val", "test"))
    torch.manual_seed(config.seed * 1000 + fold)
    encoder = RecordEncoder(cohort.schema).fit(records.loc[ids["train"]])
    normaliser = FeatureNormaliser.fit(train_bags)
    model = create_model(config.model, model_config)
    model, history = fit(model, train_bags, val_bags, records, encoder, normaliser, config, model_config.n_classes, resume_path=resume, distributed=distributed)
    if not main:
        return
    probs = evaluate(model, test_bags, records, encoder, normaliser, prepared.device, config=config)
    bad = [b.slide_id for b, row in zip(test_bags, probs) if not np.isfinite(row).all()]
    if bad:
        resume.unlink(missing_ok=True)  # a rerun must not resume the diverged state
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(
            f"fold {fold}: the trained {config.model} gave non-finite probabilities (NaN or Inf) for {len(bad)} held-out {cohort.sample_name}(s): {shown}. "
            "Training diverged or those inputs hold extreme values; nothing was written for this fold. Check those samples, try a lower learning rate "
            "(--set lr=...), then run the same command again (finished folds are kept)."
        )
    write_text_atomic(fold_dir / "history.csv", history.to_csv(index=False))
    save_checkpoint(fold_dir / "checkpoint.pt", LoadedModel(config.model, model.cpu(), model_config, encoder, normaliser), extra={"fold": fold, "train_patients": ids["train"], "val_patients": ids["val"]})
    write_text_atomic(fold_dir / "predictions.csv", _prediction_table(test_bags, probs, fold, cohort.schema.label.classes).to_csv(index=False))
    resume.unlink(missing_ok=True)
    write_json_atomic(fold_dir / DONE_MARKER, {"fold": fold, "digest": digest, "files": list(FOLD_FILES), "test_patients": len(ids["test"])})


def _bags_of(bags: list[Bag], patients: list[str]) -> list[Bag]:
    """The samples of ``patients``, in the order of ``bags``."""
    chosen = set(patients)
    return [b for b in bags if b.patient_id in chosen]


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


def run_metrics(predictions: pd.DataFrame, cohort: Cohort, config: TrainConfig, truth: GroundTruth | None = None) -> dict:
    """Pooled metrics with bootstrap CIs, per-fold metrics, and (with ground truth) split by region agreement."""
    classes = list(cohort.schema.label.classes)
    prob_cols = [f"prob_{c}" for c in classes]
    y = predictions["y_true"].map(classes.index).to_numpy()
    probs = predictions[prob_cols].to_numpy()
    out: dict = {"model": config.model, "overall": summarise(y, probs, seed=config.seed, classes=classes), "per_fold": {}}
    for fold, part in predictions.groupby("fold"):
        out["per_fold"][str(fold)] = {"n": int(len(part)), "accuracy": float((part["y_true"] == part["y_pred"]).mean())}
    truth = truth if truth is not None else load_truth(cohort)
    regions = truth.region_agreement() if truth is not None else None
    if regions is not None:
        merged = predictions.merge(regions, on="patient_id", how="left")
        for name, part in merged.groupby("disagree"):
            key = "regions_disagree" if bool(name) else "regions_agree"
            out[key] = {"n": int(len(part)), "accuracy": float((part["y_true"] == part["y_pred"]).mean())}
    return out


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
    cohort: Cohort, features_dir: str | Path | None, out_dir: str | Path, models: list[str], base: TrainConfig = TrainConfig(), *, progress: bool = True, workers: int = 1,
    distributed: Distributed = Distributed(), given: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Train every model with identical folds (same seed, same patients) and write ``comparison.csv``.

    With ``workers > 1`` (CPU only) models train in parallel processes of one thread each, which
    uses a small machine better than one process with several threads for models this size.
    Under torchrun (``distributed``) the models train one after the other, each on all ranks.

    ``base`` is shared by all models: each gets the model settings it reads and the defaults for
    the rest (`comparison_configs`), so ``--set n_layers=1`` changes PersAM and leaves ABMIL as it
    is; a changed setting that none of the models reads is an error. A model with a training recipe
    (the published PersAM's) gets it for the options not in ``given`` (`with_recipe`).
    """
    models = list(dict.fromkeys(models))  # a model named twice is trained once
    if not models:
        raise ValueError("compare needs at least one model, e.g. --models persam,abmil")
    check_models(cohort, models)
    if workers < 1:
        raise ValueError(f"The 'workers' parameter must be an int >= 1. Got {workers!r} instead.")
    if workers > 1 and distributed.enabled:
        raise ValueError("compare --workers N runs one process per model; under torchrun every rank already trains each model, so use --workers 1")
    device = distributed.device(base.device)  # CUDA asked for where there is none: fail before anything is written
    out_dir = Path(out_dir)
    configs = comparison_configs(base, models, cohort.input_kind, given)
    # compare's own folder is locked by this process; each run folder by the process that trains it
    with output_lock(out_dir, "compare") if distributed.is_main else nullcontext():
        runs = list(train_variants(cohort, features_dir, out_dir, configs, workers=workers, progress=progress, distributed=distributed, device=device).values())
        folds = [run.folds for run in runs]
        if not all(f.equals(folds[0]) for f in folds):
            raise ValueError(f"{out_dir}: the runs there were not trained on identical folds (an older run of another cohort?). Use a new --out directory.")
        table = comparison_table(runs)
        if distributed.is_main:
            remove_stale_temps(out_dir)
            write_text_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    return table


def comparison_configs(base: TrainConfig, models: list[str], input_kind: str, given: Iterable[str] | None = None) -> dict[str, TrainConfig]:
    """Each model's configuration in a comparison: ``base`` with that model, the model settings
    it reads (`settings_for`; the others at their defaults) and its training recipe for the options
    not in ``given`` (`with_recipe`). A setting ``base`` changes that none of ``models`` reads on
    ``input_kind`` raises the ValueError of `check_settings`."""
    check_settings(models, base.model_settings, input_kind)
    return {m: with_recipe(replace(base, model=m, model_settings=settings_for(m, base.model_settings, input_kind)), given) for m in models}


def train_variants(
    cohort: Cohort, features_dir: str | Path | None, out_dir: str | Path, configs: dict[str, TrainConfig], *, workers: int = 1, progress: bool = True,
    distributed: Distributed = Distributed(), device: torch.device | None = None,
) -> dict[str, "Run"]:
    """Train each named configuration into ``out_dir/<name>`` (resumable: finished folds are kept)
    and return the runs by name. With ``workers > 1`` on CPU they train in parallel processes of
    one thread each. What `compare_models` and an ablation (one model, several settings) share."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    out_dir = Path(out_dir)
    device = device or distributed.device(next(iter(configs.values())).device)
    jobs = [(cohort.manifest_path, None if features_dir is None else str(features_dir), str(out_dir / name), config) for name, config in configs.items()]
    if workers > 1 and device.type == "cpu" and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            list(pool.map(_train_job, jobs))
    else:
        for _, features, run_dir, config in jobs:
            train_cross_validated(cohort, features, run_dir, config, progress=progress, distributed=distributed)
    return {name: Run(out_dir / name) for name in configs}


def _train_job(job: tuple[Path, str | None, str, TrainConfig]) -> str:
    """Train one model in a worker process (one thread: the workers share the cores)."""
    from persam_lib.cohort.manifest import load_manifest

    torch.set_num_threads(1)
    manifest, features, run_dir, config = job
    train_cross_validated(load_manifest(manifest), features, run_dir, config, progress=False)
    return run_dir
