"""A grid of patches over the tissue, in level-0 pixel coordinates, at a target resolution."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchConfig:
    """Patch side and stride in pixels *at the target resolution* ``mpp`` (microns per pixel).

    ``mpp=None`` means the slide's native level-0 resolution. ``stride=None`` means no overlap
    (stride = patch_size); a smaller stride gives overlapping patches.
    """

    patch_size: int = 256
    stride: int | None = None
    mpp: float | None = 0.5  # 0.5 µm/px ≈ 20x
    min_tissue_fraction: float = 0.25  # of the patch on the (solid) tissue mask

    def __post_init__(self) -> None:
        if self.patch_size < 8:
            raise ValueError(f"The 'patch_size' parameter must be an int >= 8. Got {self.patch_size} instead.")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"The 'stride' parameter must be an int >= 1 or None. Got {self.stride} instead.")
        if self.mpp is not None and not 0.05 <= self.mpp <= 20:
            raise ValueError(f"The 'mpp' parameter must be in [0.05, 20] microns per pixel or None. Got {self.mpp} instead.")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(f"The 'min_tissue_fraction' parameter must be in [0, 1]. Got {self.min_tissue_fraction} instead.")


@dataclass(frozen=True)
class PatchPlan:
    """How one slide is cut: which pyramid level is read, and patch geometry in level-0 pixels."""

    level: int  # pyramid level the pixels are read from
    level_downsample: float
    read_size: int  # patch side read at `level`, resized to `patch_size` when they differ
    patch_size: int  # side of the encoded patch, at the target resolution
    patch_size_level0: int
    stride_level0: int
    mpp: float  # resolution of the encoded patch


def plan_patches(level0_mpp: float, level_downsamples: tuple[float, ...], config: PatchConfig = PatchConfig()) -> PatchPlan:
    """Choose the coarsest pyramid level that is at least as fine as the target resolution.

    Reading from a level no coarser than the target and resizing down keeps every detail the
    target resolution can show; reading a coarser level and upsampling would invent it.
    """
    target_mpp = config.mpp if config.mpp is not None else level0_mpp
    target_ds = target_mpp / level0_mpp
    candidates = [i for i, d in enumerate(level_downsamples) if d <= target_ds * 1.01]
    level = max(candidates, key=lambda i: level_downsamples[i]) if candidates else 0
    level_ds = level_downsamples[level]
    patch_level0 = int(round(config.patch_size * target_ds))
    stride_level0 = int(round((config.stride or config.patch_size) * target_ds))
    read_size = int(round(patch_level0 / level_ds))
    return PatchPlan(level, level_ds, read_size, config.patch_size, patch_level0, max(stride_level0, 1), target_mpp)


def patch_grid(mask: np.ndarray, mask_downsample: float, level0_size: tuple[int, int], patch_size_level0: int, stride_level0: int, min_tissue_fraction: float = 0.25) -> np.ndarray:
    """Top-left level-0 coordinates (N, 2) [x, y] of patches whose tissue fraction is high enough.

    The tissue fraction of a patch is measured on the tissue mask (``mask_downsample`` level-0
    pixels per mask pixel). Patches lie wholly inside the slide. The grid starts at 0 with step
    ``stride_level0``; where the slide's width (height) is not a whole number of steps, one more
    column (row) is added flush with the right (bottom) edge — shifted in, so it overlaps its
    neighbour rather than running off the slide — so tissue in the last strip is not lost.
    """
    width, height = level0_size
    xs, ys = grid_positions(width, patch_size_level0, stride_level0), grid_positions(height, patch_size_level0, stride_level0)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)
    fractions = mask_fraction(mask, mask_downsample, coords, patch_size_level0)
    return coords[fractions >= min_tissue_fraction]


def grid_positions(length: int, patch_size: int, stride: int) -> np.ndarray:
    """Patch starts along one side of ``length`` pixels: 0, stride, … and, when the last one stops
    short of the edge, one more at ``length - patch_size`` (flush with the edge, inside it)."""
    if length < patch_size:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, length - patch_size + 1, stride, dtype=np.int64)
    if starts[-1] + patch_size < length:
        starts = np.append(starts, length - patch_size)
    return starts


def mask_fraction(mask: np.ndarray, mask_downsample: float, coords: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of each patch (level-0 top-left ``coords``, side ``patch_size``) covered by ``mask``.

    Uses a summed-area table, so the cost is one pass over the mask plus O(1) per patch.
    """
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    x0 = np.clip(np.floor(coords[:, 0] / mask_downsample).astype(int), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / mask_downsample).astype(int), 0, h)
    x1 = np.clip(np.ceil((coords[:, 0] + patch_size) / mask_downsample).astype(int), 0, w)
    y1 = np.clip(np.ceil((coords[:, 1] + patch_size) / mask_downsample).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return total / area


@dataclass(frozen=True)
class GridCoverage:
    """How well a patch grid covers reference tissue (e.g. `clam_threshold_mask` at level 0)."""

    patches: int
    tissue_captured: float  # share of the reference tissue pixels that lie inside some patch
    patches_with_tissue: float  # share of the patches whose reference-tissue fraction is >= `min_fraction`
    min_fraction: float


def grid_coverage(reference: np.ndarray, reference_downsample: float, coords: np.ndarray, patch_size: int, min_fraction: float = 0.25) -> GridCoverage:
    """Tissue captured by the patches at ``coords`` (level-0 top-left, side ``patch_size``), and
    the share of patches holding at least ``min_fraction`` reference tissue.

    The two numbers pull against each other (more patches capture more tissue but hold less
    each), so a mask and patch rule are judged by both.
    """
    reference = np.asarray(reference, dtype=bool)
    covered = np.zeros(reference.shape, dtype=bool)
    for x, y in np.asarray(coords, dtype=np.int64):
        x0, y0 = int(x // reference_downsample), int(y // reference_downsample)
        x1, y1 = int(np.ceil((x + patch_size) / reference_downsample)), int(np.ceil((y + patch_size) / reference_downsample))
        covered[y0:y1, x0:x1] = True
    total = int(reference.sum())
    captured = float((reference & covered).sum() / total) if total else float("nan")
    fractions = mask_fraction(reference, reference_downsample, np.asarray(coords).reshape(-1, 2), patch_size)
    held = float(np.mean(fractions >= min_fraction)) if len(fractions) else float("nan")
    return GridCoverage(len(fractions), captured, held, min_fraction)
