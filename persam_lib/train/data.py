"""Bags in memory and their batching: features of each slide + its patient's encoded record."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.store import feature_path, read_features
from persam_lib.models.base import Batch
from persam_lib.models.clinical import RecordEncoder


@dataclass
class Bag:
    """One slide's patch features with its patient and label."""

    slide_id: str
    patient_id: str
    features: np.ndarray  # (N, D)
    coords: np.ndarray  # (N, 2)
    patch_size: int  # level-0 pixels
    y: int


def load_bags(cohort: Cohort, features_dir: str | Path) -> list[Bag]:
    """Read every slide's feature file; a missing file is an error that says to run `persam extract`."""
    bags = []
    for row in cohort.slide_table().itertuples():
        path = feature_path(features_dir, row.slide_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no features for slide '{row.slide_id}'. Run `persam extract` first (see failures.csv there if it failed).")
        data = read_features(path)
        bags.append(Bag(row.slide_id, row.patient_id, data.features, data.coords, data.patch_size_level0, int(row.y)))
    return bags


@dataclass
class FeatureNormaliser:
    """Per-dimension standardisation of patch features, fitted on training bags only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, bags: list[Bag]) -> "FeatureNormaliser":
        stacked = np.concatenate([b.features for b in bags])
        return cls(stacked.mean(0).astype(np.float32), np.maximum(stacked.std(0), 1e-6).astype(np.float32))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "FeatureNormaliser":
        return cls(np.asarray(state["mean"], dtype=np.float32), np.asarray(state["std"], dtype=np.float32))


def collate(features: list[np.ndarray], coords: list[np.ndarray], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser) -> Batch:
    """Pad bags to the longest and encode their records into one `Batch` (one record row per bag)."""
    b, n, d = len(features), max(len(f) for f in features), features[0].shape[1]
    feats = np.zeros((b, n, d), dtype=np.float32)
    mask = np.zeros((b, n), dtype=bool)
    xy = np.zeros((b, n, 2), dtype=np.int64)
    for i, (f, c) in enumerate(zip(features, coords)):
        feats[i, : len(f)] = normaliser(f)
        mask[i, : len(f)] = True
        xy[i, : len(c)] = c
    codes, values = encoder.encode(records)
    return Batch(torch.from_numpy(feats), torch.from_numpy(mask), torch.from_numpy(xy), codes, values)


def collate_records(features: np.ndarray, coords: np.ndarray, records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser) -> Batch:
    """One bag under several records (the rows of ``records``), the bag stored once (see `Batch`)."""
    codes, values = encoder.encode(records)
    return Batch(
        torch.from_numpy(normaliser(features).astype(np.float32))[None],
        torch.ones(1, len(features), dtype=torch.bool),
        torch.from_numpy(np.asarray(coords, dtype=np.int64))[None],
        codes,
        values,
    )
