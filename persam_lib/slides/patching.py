"""A grid of patches over the tissue, in level-0 pixel coordinates."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchConfig:
    """Patch side and stride in level-0 pixels, and the tissue fraction a patch must cover."""

    patch_size: int = 256
    stride: int = 256  # = patch_size: no overlap
    min_tissue_fraction: float = 0.5


def patch_grid(
    mask: np.ndarray,
    mask_downsample: float,
    level0_size: tuple[int, int],
    config: PatchConfig = PatchConfig(),
) -> np.ndarray:
    """Top-left level-0 coordinates (N, 2) [x, y] of patches whose tissue fraction is high enough.

    The tissue fraction of a patch is measured on the thumbnail mask (``mask_downsample`` level-0
    pixels per mask pixel). Patches lie wholly inside the slide.
    """
    width, height = level0_size
    xs = np.arange(0, width - config.patch_size + 1, config.stride)
    ys = np.arange(0, height - config.patch_size + 1, config.stride)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)
    fractions = mask_fraction(mask, mask_downsample, coords, config.patch_size)
    return coords[fractions >= config.min_tissue_fraction]


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
