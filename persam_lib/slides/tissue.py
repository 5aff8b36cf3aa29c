"""Tissue segmentation on a slide thumbnail (CLAM-style: saturation + Otsu, morphology, minimum area)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu


@dataclass(frozen=True)
class TissueConfig:
    """Knobs of the tissue mask; areas are in thumbnail pixels."""

    median_size: int = 5  # median filter on saturation, removes dust and JPEG noise
    min_saturation: float = 0.05  # floor for the Otsu threshold, so blank slides give no tissue
    closing_radius: int = 2
    min_area: int = 64  # connected components smaller than this are dropped (dust, debris)
    max_hole_area: int = 64  # holes smaller than this are filled
    reject_pen: bool = True  # drop blue/green/black ink: H&E is pink to purple, so red >= green


def tissue_mask(thumbnail_rgb: np.ndarray, config: TissueConfig = TissueConfig()) -> np.ndarray:
    """Boolean mask (h, w) of tissue in an RGB thumbnail.

    Tissue is saturated (stained) while glass background is white/grey, so Otsu's threshold on a
    median-filtered saturation channel separates them; a minimum threshold keeps a blank slide blank.
    """
    saturation = rgb2hsv(thumbnail_rgb)[..., 1]
    saturation = ndimage.median_filter(saturation, size=config.median_size)
    try:
        threshold = threshold_otsu(saturation)
    except ValueError:  # constant image
        threshold = 1.0
    mask = saturation > max(threshold, config.min_saturation)
    if config.reject_pen:
        mask &= ~pen_marks(thumbnail_rgb)
    if config.closing_radius > 0:
        structure = _disk(config.closing_radius)
        mask = ndimage.binary_closing(mask, structure=structure, border_value=0)
    labels, n = ndimage.label(mask)
    if n:
        areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, dtype=bool)
        keep[1:] = areas >= config.min_area
        mask = keep[labels]
    holes = ndimage.binary_fill_holes(mask) & ~mask
    hole_labels, n_holes = ndimage.label(holes)
    if n_holes:
        hole_areas = ndimage.sum(holes, hole_labels, index=np.arange(1, n_holes + 1))
        small = np.zeros(n_holes + 1, dtype=bool)
        small[1:] = hole_areas < config.max_hole_area
        mask = mask | small[hole_labels]
    return mask


def pen_marks(thumbnail_rgb: np.ndarray) -> np.ndarray:
    """Pixels of marker ink: blue or green (green channel above red) or near-black.

    Eosin and haematoxylin both absorb green more than red, so stained tissue always has
    red >= green; ink of the usual marker colours does not.
    """
    rgb = thumbnail_rgb[..., :3].astype(np.int16)
    r, g = rgb[..., 0], rgb[..., 1]
    coloured_ink = g > r + 10
    black_ink = rgb.max(-1) < 60
    return ndimage.binary_dilation(coloured_ink | black_ink, iterations=1)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2
