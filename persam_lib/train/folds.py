"""Patient-level, label-stratified cross-validation folds."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split


def make_folds(patient_labels: pd.Series, n_folds: int = 5, seed: int = 0) -> pd.Series:
    """Assign every patient to exactly one test fold (0..n_folds-1), stratified by label.

    ``patient_labels`` is indexed by patient_id (one entry per patient); slides inherit their
    patient's fold, so no patient is ever split across train and test.
    """
    if patient_labels.index.duplicated().any():
        raise ValueError("patient_labels must have one entry per patient")
    smallest = patient_labels.value_counts().min()
    if n_folds < 2 or smallest < n_folds:
        raise ValueError(f"n_folds must be between 2 and the size of the smallest class ({smallest}), got {n_folds}")
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(patient_labels), dtype=int)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(patient_labels)), patient_labels.to_numpy())):
        folds[test] = fold
    return pd.Series(folds, index=patient_labels.index, name="fold")


def split_validation(patient_labels: pd.Series, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split training patients into (train, validation) ids, stratified by label when possible."""
    ids = patient_labels.index.to_numpy()
    n_val = max(int(round(len(ids) * fraction)), 2)
    stratify = patient_labels.to_numpy() if patient_labels.value_counts().min() >= 2 else None
    classes = patient_labels.nunique()
    if stratify is not None and n_val < classes:  # a stratified split needs a patient of every class on each side
        if len(ids) - classes >= classes:
            n_val = classes
        else:
            stratify = None
    train, val = train_test_split(ids, test_size=n_val, random_state=seed, stratify=stratify)
    return sorted(train), sorted(val)
