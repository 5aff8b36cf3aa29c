"""Extraction runner: slide → tissue mask → patch grid → encoder → one HDF5 file per slide.

Patches are read by a PyTorch DataLoader whose worker processes decode pixels while the main
process encodes the previous batch. Resumable (a slide whose feature file is complete is
skipped) and fault-tolerant (a slide that fails — unreadable, no tissue, a corrupt tile — is
recorded in ``failures.csv`` with the reason while the others go on). Each slide is written to a
temporary file and renamed when complete, so a crash never leaves a half-written cache.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from persam_lib.io.atomic import atomic_path, write_text_atomic
from persam_lib.cohort.manifest import Cohort
from persam_lib.features.encoders import Encoder, create_encoder
from persam_lib.features.store import SlideFeatures, feature_path, is_complete, write_features
from persam_lib.slides.patching import PatchConfig, PatchPlan, patch_grid, plan_patches
from persam_lib.slides.reader import SlideReader, open_slide
from persam_lib.slides.tissue import TissueConfig, tissue_mask


@dataclass(frozen=True)
class ExtractConfig:
    """How features are extracted; saved as ``extract_config.json`` beside the features."""

    encoder: str = "stats"
    encoder_weights: str | None = None  # local weight file for CNN/ViT encoders
    patch: PatchConfig = field(default_factory=PatchConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    thumbnail_downsample: float = 16.0  # tissue is segmented on the level nearest this downsample
    batch_size: int = 64
    num_workers: int = -1  # patch-reading processes; -1 = one per CPU but one, 0 = read in the main process
    reader_backend: str = "auto"  # "auto" (fast tiled-TIFF path when possible), "openslide"

    def workers(self) -> int:
        if self.num_workers >= 0:
            return self.num_workers
        return max((os.cpu_count() or 1) - 1, 1)


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


@dataclass
class SlidePlan:
    """Everything needed to read one slide's patches, decided before any patch is read."""

    slide_id: str
    path: str
    mpp_override: float | None
    coords: np.ndarray  # (N, 2) level-0 top-left
    plan: PatchPlan
    mask: np.ndarray
    mask_downsample: float


def plan_slide(reader: SlideReader, slide_id: str, config: ExtractConfig = ExtractConfig(), mpp_override: float | None = None) -> SlidePlan:
    """Tissue mask on the thumbnail, the pyramid level to read, and the patch grid."""
    thumb, thumb_ds = reader.thumbnail(config.thumbnail_downsample)
    mask = tissue_mask(thumb, config.tissue)
    plan = plan_patches(reader.mpp, reader.level_downsamples, config.patch)
    coords = patch_grid(mask, thumb_ds, reader.level_dimensions[0], plan.patch_size_level0, plan.stride_level0, config.patch.min_tissue_fraction)
    if len(coords) == 0:
        raise NoTissueError(
            f"{reader.path}: no patch has at least {config.patch.min_tissue_fraction:.0%} tissue (the tissue mask covers {mask.mean():.1%} "
            "of the thumbnail). Check that the slide holds tissue, or lower the minimum tissue fraction."
        )
    return SlidePlan(slide_id, str(reader.path), mpp_override, coords, plan, mask, thumb_ds)


def read_patch(reader: SlideReader, level0_xy: tuple[int, int], plan: PatchPlan) -> np.ndarray:
    """One patch at the plan's target resolution: read at the plan's level, resized when needed."""
    pixels = reader.read_region(level0_xy, plan.level, (plan.read_size, plan.read_size))
    if plan.read_size != plan.patch_size:
        pixels = np.asarray(Image.fromarray(pixels).resize((plan.patch_size, plan.patch_size), Image.BILINEAR))
    return pixels


def extract_slide(reader: SlideReader, slide_id: str, encoder: Encoder, config: ExtractConfig = ExtractConfig()) -> tuple[SlideFeatures, np.ndarray, float]:
    """Features of one slide read in this process, its tissue mask and the mask's downsample."""
    plan = plan_slide(reader, slide_id, config)
    chunks = []
    for start in range(0, len(plan.coords), config.batch_size):
        batch = np.stack([read_patch(reader, (int(x), int(y)), plan.plan) for x, y in plan.coords[start : start + config.batch_size]])
        chunks.append(encoder(batch))
    return _slide_features(plan, np.concatenate(chunks), encoder.name), plan.mask, plan.mask_downsample


class PatchDataset(Dataset):
    """Every patch of every planned slide, in slide order; each worker opens its own readers.

    A patch that cannot be read comes back as an error message instead of raising, so the
    failure is charged to its slide and the other slides go on.
    """

    def __init__(self, plans: list[SlidePlan], backend: str = "auto"):
        self.plans = plans
        self.backend = backend
        self.index = np.concatenate([np.stack([np.full(len(p.coords), i), np.arange(len(p.coords))], 1) for i, p in enumerate(plans)]) if plans else np.zeros((0, 2), int)
        self._readers: dict[int, SlideReader] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        slide, patch = (int(v) for v in self.index[i])
        plan = self.plans[slide]
        try:
            reader = self._readers.get(slide)
            if reader is None:
                for old in self._readers.values():  # slides are read in order: keep one open
                    old.close()
                self._readers = {slide: open_slide(plan.path, mpp=plan.mpp_override, backend=self.backend)}
                reader = self._readers[slide]
            x, y = plan.coords[patch]
            return slide, read_patch(reader, (int(x), int(y)), plan.plan), None
        except Exception as err:  # a corrupt tile must only fail its own slide
            return slide, None, f"{type(err).__name__}: {err}"


def _collate(items: list[tuple[int, np.ndarray | None, str | None]]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    shape = next((p.shape for _, p, _ in items if p is not None), (1, 1, 3))
    pixels = np.stack([p if p is not None else np.zeros(shape, np.uint8) for _, p, _ in items])
    return np.array([s for s, _, _ in items]), pixels, [e for _, _, e in items]


def extract(cohort: Cohort, out_dir: str | Path, config: ExtractConfig = ExtractConfig(), *, progress: bool = True) -> ExtractSummary:
    """Extract features for every slide of ``cohort`` into ``out_dir``; skip slides already done."""
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for stale in list(out_dir.glob(".*.tmp")) + list((out_dir / "masks").glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # left by a run that was killed mid-write
    write_text_atomic(out_dir / "extract_config.json", json.dumps(asdict(config), indent=2))
    encoder = create_encoder(config.encoder, weights=config.encoder_weights)
    summary = ExtractSummary()
    plans: list[SlidePlan] = []
    for row in tqdm(list(cohort.slides.itertuples()), desc="tissue + grid", disable=not progress):
        if is_complete(feature_path(out_dir, row.slide_id)):
            summary.skipped.append(row.slide_id)
            continue
        mpp = getattr(row, "mpp", None)
        mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
        try:
            with open_slide(row.path, mpp=mpp, backend=config.reader_backend) as reader:
                plans.append(plan_slide(reader, row.slide_id, config, mpp))
        except Exception as err:  # one failed slide must not stop the others
            summary.failed[row.slide_id] = f"{type(err).__name__}: {err}"

    loader = DataLoader(PatchDataset(plans, config.reader_backend), batch_size=config.batch_size, num_workers=config.workers() if len(plans) else 0, collate_fn=_collate)
    remaining = {i: len(p.coords) for i, p in enumerate(plans)}
    chunks: dict[int, list[np.ndarray]] = {i: [] for i in remaining}
    errors: dict[int, str] = {}
    bar = tqdm(total=len(plans), desc="extract", unit="slide", disable=not progress)
    slide_bar = tqdm(total=len(plans[0].coords) if plans else 0, desc=plans[0].slide_id if plans else "", unit="patch", position=1, leave=False, disable=not progress)
    for slide_idx, pixels, batch_errors in loader:
        ok = np.array([e is None for e in batch_errors])
        features = encoder(pixels[ok]) if ok.any() else np.zeros((0, 0), np.float32)
        for s, e in zip(slide_idx[~ok], (e for e in batch_errors if e is not None)):
            errors.setdefault(int(s), e)
        for s in np.unique(slide_idx):
            s = int(s)
            chunks[s].append(features[slide_idx[ok] == s])
            remaining[s] -= int((slide_idx == s).sum())
            slide_bar.update(int((slide_idx == s).sum()))
            if remaining[s] == 0:
                _finish_slide(plans[s], chunks.pop(s), errors.get(s), encoder.name, out_dir, summary)
                bar.update()
                if s + 1 < len(plans):  # the per-slide bar moves on to the next slide
                    slide_bar.reset(total=len(plans[s + 1].coords))
                    slide_bar.set_description(plans[s + 1].slide_id)
    slide_bar.close()
    bar.close()
    failures = pd.DataFrame([{"slide_id": k, "reason": v} for k, v in summary.failed.items()], columns=["slide_id", "reason"])
    write_text_atomic(out_dir / "failures.csv", failures.to_csv(index=False))
    return summary


def _finish_slide(plan: SlidePlan, chunks: list[np.ndarray], error: str | None, encoder_name: str, out_dir: Path, summary: ExtractSummary) -> None:
    if error is not None:
        summary.failed[plan.slide_id] = error
        return
    try:
        write_features(feature_path(out_dir, plan.slide_id), _slide_features(plan, np.concatenate(chunks), encoder_name))
        _save_mask(out_dir / "masks" / f"{plan.slide_id}.png", plan.mask, plan.mask_downsample)
        summary.written.append(plan.slide_id)
    except Exception as err:
        summary.failed[plan.slide_id] = f"{type(err).__name__}: {err}"


def _slide_features(plan: SlidePlan, features: np.ndarray, encoder_name: str) -> SlideFeatures:
    p = plan.plan
    return SlideFeatures(
        slide_id=plan.slide_id, features=features.astype(np.float32), coords=plan.coords, patch_size=p.patch_size, patch_level=p.level,
        downsample=p.level_downsample, mpp=p.mpp, encoder=encoder_name, patch_size_level0=p.patch_size_level0,
    )


def load_tissue_mask(features_dir: str | Path, slide_id: str) -> tuple[np.ndarray, float]:
    """The tissue mask saved beside the features, and its downsample (level-0 px per mask px)."""
    image = Image.open(Path(features_dir) / "masks" / f"{slide_id}.png")
    return np.asarray(image) > 0, float(image.info.get("downsample", 16.0))


def _save_mask(path: Path, mask: np.ndarray, downsample: float) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("downsample", str(downsample))
    with atomic_path(path) as tmp:
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG", pnginfo=info)


