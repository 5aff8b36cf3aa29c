"""Extraction runner: slide → tissue mask → patch grid → encoder → one HDF5 file per slide.

Resumable (a slide whose feature file is complete is skipped) and fault-tolerant (a slide that
fails is recorded in ``failures.csv`` with the reason while the others go on).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from persam_lib.cohort.manifest import Cohort
from persam_lib.features.encoders import Encoder, create_encoder
from persam_lib.features.store import SlideFeatures, feature_path, is_complete, write_features
from persam_lib.slides.patching import PatchConfig, patch_grid, plan_patches
from persam_lib.slides.reader import SlideReader, open_slide
from persam_lib.slides.tissue import TissueConfig, tissue_mask


@dataclass(frozen=True)
class ExtractConfig:
    """How features are extracted; saved as ``extract_config.json`` beside the features."""

    encoder: str = "stats"
    patch: PatchConfig = field(default_factory=PatchConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    thumbnail_downsample: float = 16.0  # tissue is segmented on the level nearest this downsample
    batch_size: int = 64


@dataclass
class ExtractSummary:
    """What an extraction run did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        text = f"extract: {len(self.written)} written, {len(self.skipped)} already done, {len(self.failed)} failed"
        if self.failed:
            text += f" ({', '.join(sorted(self.failed))}; reasons in failures.csv)"
        return text


class NoTissueError(RuntimeError):
    """The tissue mask of a slide is empty, so there is nothing to encode."""


def extract_slide(reader: SlideReader, slide_id: str, encoder: Encoder, config: ExtractConfig = ExtractConfig()) -> tuple[SlideFeatures, np.ndarray, float]:
    """Features of one slide, its tissue mask and the mask's downsample (level-0 px per mask px)."""
    thumb, thumb_ds = reader.thumbnail(config.thumbnail_downsample)
    mask = tissue_mask(thumb, config.tissue)
    plan = plan_patches(reader.mpp, reader.level_downsamples, config.patch)
    coords = patch_grid(mask, thumb_ds, reader.level_dimensions[0], plan.patch_size_level0, plan.stride_level0, config.patch.min_tissue_fraction)
    if len(coords) == 0:
        raise NoTissueError(f"{reader.path}: no patch has at least {config.patch.min_tissue_fraction:.0%} tissue (tissue mask covers {mask.mean():.1%} of the thumbnail). Check the slide, or lower min_tissue_fraction.")
    chunks = []
    for start in range(0, len(coords), config.batch_size):
        batch = np.stack([read_patch(reader, (int(x), int(y)), plan) for x, y in coords[start : start + config.batch_size]])
        chunks.append(encoder(batch))
    features = np.concatenate(chunks).astype(np.float32)
    data = SlideFeatures(
        slide_id=slide_id, features=features, coords=coords, patch_size=plan.patch_size, patch_level=plan.level,
        downsample=plan.level_downsample, mpp=plan.mpp, encoder=encoder.name, patch_size_level0=plan.patch_size_level0,
    )
    return data, mask, thumb_ds


def read_patch(reader: SlideReader, level0_xy: tuple[int, int], plan) -> np.ndarray:
    """One patch at the plan's target resolution: read at the plan's level, resized when needed."""
    pixels = reader.read_region(level0_xy, plan.level, (plan.read_size, plan.read_size))
    if plan.read_size != plan.patch_size:
        pixels = np.asarray(Image.fromarray(pixels).resize((plan.patch_size, plan.patch_size), Image.BILINEAR, reducing_gap=None if plan.read_size < plan.patch_size else 2.0))
    return pixels


def extract(cohort: Cohort, out_dir: str | Path, config: ExtractConfig = ExtractConfig(), *, progress: bool = True) -> ExtractSummary:
    """Extract features for every slide of ``cohort`` into ``out_dir``; skip slides already done."""
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    _atomic_text(out_dir / "extract_config.json", json.dumps(asdict(config), indent=2))
    encoder = create_encoder(config.encoder)
    summary = ExtractSummary()
    for row in tqdm(list(cohort.slides.itertuples()), desc="extract", disable=not progress):
        target = feature_path(out_dir, row.slide_id)
        if is_complete(target):
            summary.skipped.append(row.slide_id)
            continue
        try:
            mpp = getattr(row, "mpp", None)
            with open_slide(row.path, mpp=None if mpp is None or pd.isna(mpp) else float(mpp)) as reader:
                data, mask, mask_ds = extract_slide(reader, row.slide_id, encoder, config)
            write_features(target, data)
            _save_mask(out_dir / "masks" / f"{row.slide_id}.png", mask, mask_ds)
            summary.written.append(row.slide_id)
        except Exception as err:  # one failed slide must not stop the others
            summary.failed[row.slide_id] = f"{type(err).__name__}: {err}"
    failures = pd.DataFrame([{"slide_id": k, "reason": v} for k, v in summary.failed.items()], columns=["slide_id", "reason"])
    _atomic_text(out_dir / "failures.csv", failures.to_csv(index=False))
    return summary


def load_tissue_mask(features_dir: str | Path, slide_id: str) -> tuple[np.ndarray, float]:
    """The tissue mask saved beside the features, and its downsample."""
    image = Image.open(Path(features_dir) / "masks" / f"{slide_id}.png")
    return np.asarray(image) > 0, float(image.info.get("downsample", 16.0))


def _save_mask(path: Path, mask: np.ndarray, downsample: float) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("downsample", str(downsample))
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, pnginfo=info)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
