"""Attention over patches under the true record and under altered records.

Every slide (or 2-D image: its patch grid) of a patient of the run is explained by the fold model
that did not train on that patient; a patient the run never saw (a new cohort, labelled or not) by
every fold model, their maps and probabilities averaged; ``ExplainConfig.fold`` picks one model for
all. A slide's patch features (an image's pixels) are read once and all its records (original + alterations) run as one batch in which
the bag is stored once and its image side computed once (`persam_lib.models.Batch`: one bag
under K records).

The attention table has the columns of `ATTENTION_COLUMNS` — ``attention`` is the class token's
attention in the last layer (averaged over heads) — plus ``attention_rollout`` (attention rollout
through all layers; equal to ``attention`` for models with one attention step) and, when asked,
``attention_head_<h>`` per head.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from persam_lib.io.atomic import atomic_path
from persam_lib.cohort.manifest import Cohort
from persam_lib.explain.records import DEFAULT_QUANTILES, ORIGINAL, Alteration, default_alterations, numeric_targets
from persam_lib.models import MODEL_INFO, class_map_models
from persam_lib.models.base import ModelOutput
from persam_lib.train.checkpoint import LoadedModel
from persam_lib.train.data import Bag, ImageInput, collate_records, load_sample
from persam_lib.train.distributed import Distributed
from persam_lib.train.run import Run

ATTENTION_COLUMNS = ["slide_id", "x", "y", "size", "record", "attention"]
@dataclass(frozen=True)
class ExplainConfig:
    """How to explain a run; the defaults are what `persam explain` and the book use."""

    quantiles: tuple[float, ...] = DEFAULT_QUANTILES  # numeric fields' targets for the default alterations
    per_head: bool = False  # add one attention_head_<h> column per head
    per_class: bool = False  # add one attention_class_<class> column per class (models with per-class maps: persam_paper)
    fold: int | None = None  # explain every sample with this fold's model; None: a patient of the run by the model that did not train on it, a new patient by every fold model (mean maps and probabilities)
    device: str = "auto"  # "auto": CUDA when present


@dataclass
class Explanation:
    """``attention``: one row per slide × record × patch (`ATTENTION_COLUMNS` and the map columns);
    ``predictions``: one row per slide × record with the class probabilities."""

    attention: pd.DataFrame
    predictions: pd.DataFrame
    model: str = ""


def records_output(loaded: LoadedModel, bag: Bag, records: pd.DataFrame, device: torch.device | str = "cpu") -> ModelOutput:
    """The model's output for one slide or image under each row of ``records`` (one batch, the sample stored once)."""
    batch = collate_records(bag, records, loaded.record_encoder, loaded.normaliser).to(device)
    with torch.no_grad():
        out = loaded.model(batch, rollout=True)
    if out.patch_attention is None:
        raise ValueError(f"model '{loaded.name}' has no attention over patches to explain")
    return out


def check_run_matches(run: Run, cohort: Cohort) -> None:
    """A run explains only the kind of cohort it was trained on (slides or images); say so if not."""
    trained_on = run.inputs.get("modality", "slides")
    if trained_on != cohort.modality:
        raise ValueError(f"{run.path} was trained on {trained_on} but {cohort.manifest_path} is a cohort of {cohort.modality}; explain a run with the kind of cohort it was trained on")


def explain_run(run: Run, cohort: Cohort, features_dir: str | Path | None, alterations: list[Alteration] | None = None, config: ExplainConfig = ExplainConfig(), *, progress: bool = True) -> Explanation:
    """Patch attention of every slide under its original record and each alteration.

    Without ``alterations``, `default_alterations`: every categorical field to each of its other
    values, every numeric field to the cohort's ``config.quantiles``.
    """
    check_run_matches(run, cohort)
    if config.per_class and not MODEL_INFO[run.config.model].class_maps:
        raise ValueError(f"--per-class needs a model with one attention map per class ({', '.join(class_map_models())}); {run.path} holds a {run.config.model} run")
    device = Distributed().device(config.device)  # "auto": CUDA when present
    folds = run_patients(run, cohort)
    records = cohort.records()
    numeric = numeric_targets(cohort.schema, records, config.quantiles) if alterations is None else {}
    attention_parts, prediction_rows = [], []
    loaded: dict[int, LoadedModel] = {}
    rows = cohort.sample_rows()
    finished = run.finished_folds
    if config.fold is not None and config.fold not in finished:
        raise ValueError(f"{run.path} has no finished fold {config.fold} (finished: {finished})")
    for row in tqdm(list(cohort.slides.itertuples()), desc="explain", disable=not progress):
        use = models_for(row.patient_id, folds, finished, config.fold)
        for k in use:
            if k not in loaded:
                loaded[k] = run.model_for_fold(k, device=device)
        bag = load_sample(cohort, row.slide_id, features_dir, ImageInput.of(loaded[use[0]].config), rows)
        original = records.loc[row.patient_id]
        edits = alterations if alterations is not None else default_alterations(cohort.schema, original, numeric)
        labels = [ORIGINAL] + [a.label for a in edits]
        table = pd.DataFrame([original] + [a.apply(original) for a in edits])
        out, probs = mean_output([records_output(loaded[k], bag, table, device) for k in use])
        attention_parts.append(_attention_rows(row.slide_id, bag.coords, bag.patch_size, labels, out, config.per_head, run.classes if config.per_class else None))
        fold = ",".join(map(str, use))  # the fold model(s) that explained it: "1", or "0,1,2,3,4" for a new patient
        for label, p in zip(labels, probs):
            prediction_rows.append({"slide_id": row.slide_id, "patient_id": row.patient_id, "fold": fold, "record": label, **{f"prob_{c}": float(v) for c, v in zip(run.classes, p)}, "y_pred": run.classes[int(p.argmax())]})
    return Explanation(pd.concat(attention_parts, ignore_index=True), pd.DataFrame(prediction_rows), run.config.model)


def is_run_cohort(run: Run, cohort: Cohort) -> bool:
    """Whether ``cohort`` is the one ``run`` was trained on (its manifest file): only then is a
    patient id the run knows the run's patient. A cohort of new patients from elsewhere may reuse
    ids such as ``P0001``; its patients are new whatever their ids. A run that did not record its
    manifest is trusted to be explained on its own cohort."""
    trained = run.inputs.get("manifest")
    if not trained or cohort.manifest_path is None:
        return True
    return Path(trained).resolve() == Path(cohort.manifest_path).resolve()


def run_patients(run: Run, cohort: Cohort) -> pd.Series:
    """The run's folds (patient → fold) of the patients of ``cohort`` that are the run's: all of
    them on the run's own cohort, none on another (`is_run_cohort`), with a warning when the other
    cohort shares patient ids with the run (a moved copy of the run's own cohort would be explained
    as new patients, by models that trained on them)."""
    folds = run.folds
    if is_run_cohort(run, cohort):
        return folds
    shared = sorted(set(map(str, cohort.clinical.index)) & set(map(str, folds.index)))
    if shared:
        warnings.warn(f"{cohort.manifest_path} is not the manifest {run.path} was trained on ({run.inputs.get('manifest')}), but {len(shared)} of its patient ids "
                      f"are the run's (first: {', '.join(shared[:3])}): they are explained as new patients, by every fold model. If this is the run's "
                      "cohort moved elsewhere, explain it from its original manifest, or each patient's map comes from models that trained on it.", stacklevel=3)
    return folds.iloc[:0]


def models_for(patient_id: str, folds: pd.Series, finished: list[int], fold: int | None) -> list[int]:
    """The fold models that explain a patient: ``fold`` when given; a patient of the run, the one
    model that did not train on it; a patient the run never saw, every finished fold model."""
    if fold is not None:
        return [fold]
    if patient_id in folds.index:
        return [int(folds[patient_id])]
    if not finished:
        raise ValueError("the run has no finished fold to explain with; finish the training first")
    return list(finished)


def mean_output(outputs: list[ModelOutput]) -> tuple[ModelOutput, np.ndarray]:
    """The models' outputs averaged (maps stay normalised: a mean of maps that sum to 1) and the
    mean of their class probabilities (K, C); one output is returned as it is."""
    probs = np.mean([torch.softmax(o.logits.float(), -1).cpu().numpy() for o in outputs], axis=0)
    if len(outputs) == 1:
        return outputs[0], probs
    mean = lambda name: None if getattr(outputs[0], name) is None else torch.stack([getattr(o, name).float() for o in outputs]).mean(0)  # noqa: E731
    fields = ("patch_attention", "field_attention", "patch_attention_heads", "patch_attention_rollout", "class_patch_attention")
    return ModelOutput(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), **{name: mean(name) for name in fields}), probs


def _attention_rows(slide_id: str, coords: np.ndarray, size: int, labels: list[str], out: ModelOutput, per_head: bool, classes: list[str] | None = None) -> pd.DataFrame:
    k, n = len(labels), len(coords)
    columns = {
        "slide_id": slide_id,
        "x": np.tile(coords[:, 0], k),
        "y": np.tile(coords[:, 1], k),
        "size": size,
        "record": np.repeat(labels, n),
        "attention": out.patch_attention.float().cpu().numpy().ravel(),
        "attention_rollout": out.patch_attention_rollout.float().cpu().numpy().ravel(),
    }
    if per_head:
        heads = out.patch_attention_heads.float().cpu().numpy()  # (K, H, N)
        columns.update({f"attention_head_{h}": heads[:, h].ravel() for h in range(heads.shape[1])})
    if classes is not None:  # each class's map, scaled to sum to 1 over the slide like the other maps
        maps = out.class_patch_attention.float().cpu().numpy()  # (K, C, N)
        maps = maps / np.maximum(maps.sum(-1, keepdims=True), 1e-12)
        columns.update({f"attention_class_{c}": maps[:, j].ravel() for j, c in enumerate(classes)})
    return pd.DataFrame(columns)


def check_table_path(path: str | Path) -> Path:
    """``path`` if it names a table `write_table` can write (.csv or .parquet), else a ValueError."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: the output must end in .csv or .parquet")
    return path


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or parquet (by suffix) atomically."""
    path = check_table_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by `write_table`."""
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"slide_id": str, "patient_id": str})
