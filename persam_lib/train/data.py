"""Samples in memory and their batching: each slide's patch features, or each 2-D image's pixels,
with its patient's encoded record.

A 2-D image is held at the model's input size (letterboxed into a square, see
`persam_lib.images.to_model_input`), with the top-left corners of its patch grid mapped back to
the original image's pixels: attention tables, heatmaps and ground-truth masks all speak in the
pixels of the file the user gave.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.store import feature_path, read_features
from persam_lib.images import ImageReadError, Window, read_image, to_model_input
from persam_lib.models.base import Batch, ModelConfig, ModelSettings
from persam_lib.models.clinical import RecordEncoder
from persam_lib.models.cnn import cell_coords


@dataclass
class Bag:
    """One sample with its patient and label: a slide's patch features, or a 2-D image's pixels.

    For an image ``features`` is None and ``image`` holds the model input (C, S, S) in [0, 1];
    ``coords`` are the top-left corners of its patch grid and ``patch_size`` the patches' side,
    both in the original image's pixels (for a slide: level-0 pixels).
    """

    slide_id: str
    patient_id: str
    features: np.ndarray | None  # (N, D)
    coords: np.ndarray  # (N, 2)
    patch_size: int  # level-0 pixels
    y: int
    image: np.ndarray | None = None  # (C, S, S)


@dataclass(frozen=True)
class ImageInput:
    """How 2-D images become model inputs: the square side, the attention grid's cell and the
    channels (1 grey, 3 RGB; 0: as the cohort's images). The defaults are `ModelSettings`'."""

    image_size: int = ModelSettings.image_size
    grid_cell: int = ModelSettings.grid_cell
    channels: int = 0

    @classmethod
    def of(cls, config: ModelSettings) -> "ImageInput":
        """The input a model with these settings expects; a trained model's `ModelConfig` also
        fixes the channels (its ``feature_dim``), settings alone leave them to the cohort."""
        return cls(config.image_size, config.grid_cell, config.feature_dim if isinstance(config, ModelConfig) else 0)


def load_samples(cohort: Cohort, features_dir: str | Path | None = None, images: ImageInput = ImageInput()) -> list[Bag]:
    """Every sample of the cohort: slides from ``features_dir``, or images read and resized by ``images``."""
    if cohort.modality == "images":
        return load_images(cohort, images)
    if features_dir is None:
        raise ValueError(f"{cohort.manifest_path}: a slide cohort is read as patch features; give their directory (--features DIR; run `persam extract` first)")
    return load_bags(cohort, features_dir)


def load_sample(cohort: Cohort, slide_id: str, features_dir: str | Path | None, images: ImageInput, rows: dict[str, dict] | None = None) -> Bag:
    """One sample (a slide's features or an image), as `load_samples` reads it; ``rows``
    (`Cohort.sample_rows`, built once by a caller that reads many samples) saves rebuilding them."""
    row = (rows if rows is not None else cohort.sample_rows()).get(slide_id)
    if row is None:
        raise KeyError(f"{cohort.manifest_path}: no {cohort.sample_name} '{slide_id}' in the cohort")
    if cohort.modality == "images":
        return _image_bag(cohort, row, images)
    data = read_features(feature_path(features_dir, slide_id))  # a NaN/Inf value is an error naming the slide and row
    return Bag(slide_id, row["patient_id"], data.features, data.coords, data.patch_size_level0, int(row["y"]))


def load_images(cohort: Cohort, images: ImageInput = ImageInput()) -> list[Bag]:
    """Read every image of an image cohort. Unreadable images are collected and reported together
    (file, image id, what is wrong), so a user fixes the table in one pass; nothing trains on a
    cohort with an image missing. With ``images.channels`` 0, grey images are made RGB when any
    image of the cohort is RGB."""
    bags, problems = [], []
    for row in cohort.sample_rows().values():
        try:
            bags.append(_image_bag(cohort, row, images))
        except ImageReadError as err:
            problems.append(f"  - image '{row['slide_id']}' (patient '{row['patient_id']}'): {err}")
    if problems:
        raise ImageReadError(cohort.manifest_path, f"{len(problems)} image(s) could not be read:\n" + "\n".join(problems) + "\n", "Fix those files, or remove their rows from the image table.")
    if images.channels == 0 and len({b.image.shape[0] for b in bags}) > 1:
        for b in bags:
            b.image = np.repeat(b.image, 3, axis=0) if b.image.shape[0] == 1 else b.image
    return bags


def image_window(cohort: Cohort, row: dict) -> Window | None:
    """The display window of one image: its row in the image table, else the manifest's ``window``, else None (the file's own)."""
    center, width = row.get("window_center", np.nan), row.get("window_width", np.nan)
    if pd.notna(center) and pd.notna(width):
        return Window(float(center), float(width))
    window = cohort.raw.get("window")
    return Window(float(window["center"]), float(window["width"])) if window else None


def _image_bag(cohort: Cohort, row: dict, images: ImageInput) -> Bag:
    """One image's row of the sample table (slide_id, patient_id, y, path, window) read into a `Bag`."""
    pixels = read_image(row["path"], image_window(cohort, row))
    channels = images.channels or pixels.shape[-1]
    model_input, box = to_model_input(pixels, images.image_size, channels)
    corners = cell_coords(images.image_size, images.grid_cell).numpy().astype(np.float64)
    coords = np.round(box.to_original(corners)).astype(np.int64)
    patch = int(round(images.grid_cell / box.scale))
    return Bag(row["slide_id"], str(row["patient_id"]), None, coords, patch, int(row["y"]), image=model_input)


def load_bags(cohort: Cohort, features_dir: str | Path) -> list[Bag]:
    """Read every slide's feature file, checked together (`check_feature_folder`): a missing file
    says to run `persam extract`; files that disagree in dimension or settings, or a NaN/Inf value
    (naming the slide and row), are a ValueError before anything trains."""
    from persam_lib.features.consistency import check_feature_folder

    table = cohort.slide_table()
    folder = check_feature_folder(features_dir, table["slide_id"])
    bags = []
    for row in table.itertuples():
        data = folder.features[row.slide_id]
        bags.append(Bag(row.slide_id, row.patient_id, data.features, data.coords, data.patch_size_level0, int(row.y)))
    return bags


@dataclass
class FeatureNormaliser:
    """Per-dimension standardisation of patch features, fitted on training bags only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, bags: list[Bag]) -> "FeatureNormaliser":
        """Per feature dimension over all patches, or per channel over all pixels for images."""
        if bags[0].image is not None:
            pixels = np.stack([b.image for b in bags])  # (B, C, S, S)
            return cls(pixels.mean((0, 2, 3)).astype(np.float32), np.maximum(pixels.std((0, 2, 3)), 1e-6).astype(np.float32))
        stacked = np.concatenate([b.features for b in bags])
        return cls(stacked.mean(0).astype(np.float32), np.maximum(stacked.std(0), 1e-6).astype(np.float32))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Standardise patch features (N, D), or an image (C, H, W) channel by channel."""
        if features.ndim == 3:
            return (features - self.mean[:, None, None]) / self.std[:, None, None]
        return (features - self.mean) / self.std

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "FeatureNormaliser":
        return cls(np.asarray(state["mean"], dtype=np.float32), np.asarray(state["std"], dtype=np.float32))


def _pad(features: list[np.ndarray], coords: list[np.ndarray], normaliser: FeatureNormaliser) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bags of (N_i, D) features and (N_i, 2) corners, standardised and padded to the longest:
    features (B, N, D) float32, patch mask (B, N) and corners (B, N, 2) long."""
    b, n, d = len(features), max(len(f) for f in features), features[0].shape[1]
    feats = np.zeros((b, n, d), dtype=np.float32)
    mask = np.zeros((b, n), dtype=bool)
    xy = np.zeros((b, n, 2), dtype=np.int64)
    for i, (f, c) in enumerate(zip(features, coords)):
        feats[i, : len(f)] = normaliser(f)
        mask[i, : len(f)] = True
        xy[i, : len(c)] = c
    return torch.from_numpy(feats), torch.from_numpy(mask), torch.from_numpy(xy)


class FoldBatches:
    """Batches of one fold's samples (slides or images) for a loop that makes one every step.

    Each patient's record is encoded once, here: looking records up in the table and encoding
    them for every batch took a fifth of a small model's training step. Features and pixels are
    standardised batch by batch, as they are padded, so a fold holds no second copy of the cohort's
    features (which can be tens of GB for foundation-model features of a large cohort).
    """

    def __init__(self, bags: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser):
        patients = list(dict.fromkeys(b.patient_id for b in bags))
        self._row = {p: i for i, p in enumerate(patients)}
        self._codes, self._values = encoder.encode(records.loc[patients])
        self.normaliser = normaliser

    def batch(self, bags: list[Bag]) -> Batch:
        """``bags`` (of the fold's patients; whole, or sub-bags cut from them) standardised and
        padded, with their patients' encoded records, one row per sample."""
        rows = torch.tensor([self._row[b.patient_id] for b in bags])
        codes, values = self._codes[rows], self._values[rows]
        if bags[0].image is not None:
            return Batch.of_images(torch.from_numpy(np.stack([self.normaliser(b.image) for b in bags]).astype(np.float32)), codes, values)
        return Batch(*_pad([b.features for b in bags], [b.coords for b in bags], self.normaliser), codes, values)


def collate_records(bag: Bag, records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser) -> Batch:
    """One sample under several records (the rows of ``records``), the sample stored once (see `Batch`)."""
    codes, values = encoder.encode(records)
    if bag.image is not None:
        return Batch.of_images(torch.from_numpy(normaliser(bag.image).astype(np.float32))[None], codes, values)
    features, coords = bag.features, bag.coords
    return Batch(
        torch.from_numpy(normaliser(features).astype(np.float32))[None],
        torch.ones(1, len(features), dtype=torch.bool),
        torch.from_numpy(np.asarray(coords, dtype=np.int64))[None],
        codes,
        values,
    )
