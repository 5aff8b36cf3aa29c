"""Attention over patches under the true record and under altered records.

Every slide is explained by the fold model that did not train on its patient; all records of
a slide (original + alterations) run as one batch over the same patch features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from persam_lib.atomic import atomic_path
from persam_lib.cohort.manifest import Cohort
from persam_lib.explain.records import ORIGINAL, Alteration, default_alterations
from persam_lib.features.store import feature_path, read_features
from persam_lib.train.data import collate
from persam_lib.train.run import Run

ATTENTION_COLUMNS = ["slide_id", "x", "y", "size", "record", "attention"]


@dataclass
class Explanation:
    """``attention``: one row per slide × record × patch (the `ATTENTION_COLUMNS` contract);
    ``predictions``: one row per slide × record with the class probabilities."""

    attention: pd.DataFrame
    predictions: pd.DataFrame


def explain_run(run: Run, cohort: Cohort, features_dir: str | Path, alterations: list[Alteration] | None = None, *, progress: bool = True) -> Explanation:
    """Patch attention of every slide under its original record and each alteration.

    Without ``alterations``, every categorical field is set to each of its other values.
    """
    folds = run.folds
    records = cohort.records()
    classes = run.classes
    slides = cohort.slides
    attention_parts, prediction_rows = [], []
    loaded: dict[int, object] = {}
    for row in tqdm(list(slides.itertuples()), desc="explain", disable=not progress):
        fold = int(folds.get(row.patient_id, 0))  # a patient outside the run is explained by fold 0's model
        if fold not in loaded:
            loaded[fold] = run.model_for_fold(fold)
        model = loaded[fold]
        data = read_features(feature_path(features_dir, row.slide_id))
        original = records.loc[row.patient_id]
        edits = alterations if alterations is not None else default_alterations(cohort.schema, original)
        labels = [ORIGINAL] + [a.label for a in edits]
        table = pd.DataFrame([original] + [a.apply(original) for a in edits])
        batch = collate([data.features] * len(labels), [data.coords] * len(labels), table, model.record_encoder, model.normaliser)
        with torch.no_grad():
            out = model.model(batch)
        if out.patch_attention is None:
            raise ValueError(f"model '{model.name}' has no patch attention to explain")
        attention = out.patch_attention.float().numpy()  # (K, N)
        probs = torch.softmax(out.logits.float(), -1).numpy()
        n = len(data.coords)
        attention_parts.append(
            pd.DataFrame(
                {
                    "slide_id": row.slide_id,
                    "x": np.tile(data.coords[:, 0], len(labels)),
                    "y": np.tile(data.coords[:, 1], len(labels)),
                    "size": data.patch_size_level0,
                    "record": np.repeat(labels, n),
                    "attention": attention[:, :n].ravel(),
                }
            )
        )
        for label, p in zip(labels, probs):
            prediction_rows.append({"slide_id": row.slide_id, "patient_id": row.patient_id, "fold": fold, "record": label, **{f"prob_{c}": float(v) for c, v in zip(classes, p)}, "y_pred": classes[int(p.argmax())]})
    return Explanation(pd.concat(attention_parts, ignore_index=True)[ATTENTION_COLUMNS], pd.DataFrame(prediction_rows))


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or parquet (by suffix) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: the output must end in .csv or .parquet")
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
