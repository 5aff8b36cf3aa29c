"""Tissue segmentation: the section a pathologist would outline, found on a small image of the slide.

The mask is computed on a *segmentation image*: the slide at a fixed downsample of level 0
(`segmentation_image`, by default 16: 8 µm/px on a 20x slide), made by box-averaging whatever
stored level is read, so a slide stored as one full-resolution level costs no more to segment
than a pyramid. Then (`tissue_mask`):

1. stained pixels: saturation above the glass level plus a margin (see `saturation_threshold`);
2. marker ink removed (`pen_marks`): blue/green ink, and black ink only where it is dark *and*
   neutral, so haematoxylin-dark nuclei and keratin stay;
3. morphology in microns, converted with the image's µm/px: a closing bridges the gaps between
   collagen fibres, holes up to an area are filled (lumina and tears larger than that stay
   holes), components smaller than an area are dropped (dust, debris).

`clam_threshold_mask` is the reference the mask is measured against: CLAM's default thresholding
at full resolution, i.e. every stained pixel and nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from persam_lib.slides.base import downsample


@dataclass(frozen=True)
class TissueConfig:
    """Knobs of the tissue mask. Lengths are in µm and areas in µm² of the slide, so one setting
    means the same tissue at any scan or segmentation resolution."""

    saturation_margin: float = 0.02  # tissue: saturation at least this far above the glass level
    min_saturation: float = 0.03  # floor of the threshold, so a blank slide gives no tissue (CLAM: 8/255)
    max_saturation: float = 0.12  # ceiling of the threshold, for a field with no glass to measure
    closing_radius_um: float = 24.0  # bridges gaps between fibres up to about twice this wide
    max_hole_area_um2: float = 100_000.0  # holes smaller than this (0.1 mm²) are filled
    min_area_um2: float = 5_000.0  # components smaller than this are dropped (dust, debris)
    reject_pen: bool = True  # drop marker ink (blue, green, neutral black)
    pen_margin_um: float = 16.0  # ink is widened by this much, to catch its blurred edge

    def __post_init__(self) -> None:
        for name in ("saturation_margin", "min_saturation", "max_saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"The {name!r} parameter must be in [0, 1] (a saturation). Got {value!r} instead.")
        if self.max_saturation < self.min_saturation:
            raise ValueError(f"The 'max_saturation' parameter must be >= 'min_saturation' ({self.min_saturation}). Got {self.max_saturation!r} instead.")
        for name in ("closing_radius_um", "max_hole_area_um2", "min_area_um2", "pen_margin_um"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"The {name!r} parameter must be a number >= 0. Got {value!r} instead.")


def segmentation_image(image: np.ndarray, image_downsample: float, target_downsample: float) -> tuple[np.ndarray, float]:
    """``image`` (a stored level at ``image_downsample``) box-averaged down towards ``target_downsample``.

    Returns the image and its downsample (level-0 px per pixel). The factor is the largest integer
    that does not overshoot the target, so a level already at or beyond it comes back unchanged.
    Segmenting at a fixed coarse resolution bounds the time on slides stored as one level.
    """
    factor = int(math.floor(target_downsample / image_downsample * 1.001))
    if factor < 2 or min(image.shape[:2]) < factor:
        return image, float(image_downsample)
    return downsample(image[..., :3], factor), float(image_downsample * factor)


def tissue_mask(image_rgb: np.ndarray, mpp: float, config: TissueConfig = TissueConfig()) -> np.ndarray:
    """Boolean mask (h, w) of tissue in an RGB segmentation image of ``mpp`` µm per pixel.

    The mask is solid over the section: stained pixels, closed and hole-filled, so a patch rule
    measuring the tissue fraction on it counts loose stroma and fat between fibres as tissue.
    """
    if not mpp > 0:
        raise ValueError(f"The 'mpp' parameter must be > 0 microns per pixel. Got {mpp!r} instead.")
    rgb = np.ascontiguousarray(image_rgb[..., :3])
    saturation = _saturation(rgb)
    mask = saturation > saturation_threshold(saturation, rgb, config)
    if config.reject_pen:
        ink = pen_marks(rgb, mpp, config.pen_margin_um)
        mask &= ~ink
    else:
        ink = np.zeros(mask.shape, dtype=bool)
    radius = int(round(config.closing_radius_um / mpp))
    if radius > 0:
        mask = _closing(mask, radius)
    mask = _fill_holes(mask, config.max_hole_area_um2 / mpp**2) & ~ink  # ink over tissue is not tissue to encode
    return _drop_small(mask, config.min_area_um2 / mpp**2)


def saturation_threshold(saturation: np.ndarray, image_rgb: np.ndarray, config: TissueConfig = TissueConfig()) -> float:
    """The saturation above which a pixel is stained: the glass level plus a margin, within bounds.

    Glass is the brightest thing on a bright-field slide, so its level is the median saturation
    of the brightest tenth of the pixels. Measuring it (instead of Otsu's threshold) matters
    because tissue saturation has no valley to split at: it runs continuously from pale dermal
    collagen (a few hundredths above glass) to haematoxylin (0.5), and Otsu lands in the middle
    of the tissue (0.23 on CMU-1, glass 0.01), dropping the pale part. A glass level tracks
    tinted glass and scanner white balance; the floor keeps a blank slide blank and the ceiling
    bounds the loss on a field with no glass at all (the brightest pixels are then pale tissue).
    """
    if saturation.size == 0:
        return 1.0
    brightness = image_rgb.max(-1)
    bright = brightness >= np.percentile(brightness, 90)
    glass = float(np.median(saturation[bright]))
    return float(np.clip(glass + config.saturation_margin, config.min_saturation, config.max_saturation))


def pen_marks(image_rgb: np.ndarray, mpp: float, margin_um: float = 16.0) -> np.ndarray:
    """Pixels of marker ink, widened by ``margin_um``: blue or green ink, and neutral black ink.

    Eosin and haematoxylin both absorb green more than red, so stained tissue has red >= green;
    blue and green ink do not. Black ink is dark *and* neutral (its channels within 24 of each
    other): haematoxylin-dark nuclei and keratin are as dark but purple (red and blue above green),
    so they stay tissue.
    """
    rgb = image_rgb[..., :3].astype(np.int16)
    r, g = rgb[..., 0], rgb[..., 1]
    coloured_ink = g > r + 10
    black_ink = (rgb.max(-1) < 80) & (rgb.max(-1) - rgb.min(-1) < 24)
    ink = coloured_ink | black_ink
    iterations = max(int(round(margin_um / mpp)), 1) if margin_um > 0 else 0
    return ndimage.binary_dilation(ink, iterations=iterations) if iterations and ink.any() else ink


def clam_threshold_mask(image_rgb: np.ndarray, threshold: int = 8, median: int = 7) -> np.ndarray:
    """CLAM's default thresholding (``sthresh=8``, ``mthresh=7``): HSV saturation (0-255) median-
    filtered over ``median`` px and above ``threshold``, without CLAM's contour filtering.

    Run at level 0 it marks every stained pixel (fibres, nuclei, specks) and nothing between
    them: the reference for how much tissue a mask and its patches hold, not a mask to patch on.
    """
    saturation = np.asarray(Image.fromarray(np.ascontiguousarray(image_rgb[..., :3])).convert("HSV"))[..., 1]
    return np.asarray(Image.fromarray(saturation).filter(ImageFilter.MedianFilter(median))) > threshold


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max in [0, 1], black counted as 0."""
    high = rgb.max(-1).astype(np.float32)
    low = rgb.min(-1).astype(np.float32)
    return np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0)


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disk, padded so tissue touching the image edge is not eroded."""
    padded = np.pad(mask, radius, mode="edge")
    closed = ndimage.binary_closing(padded, structure=_disk(radius))
    return closed[radius:-radius, radius:-radius]


def _fill_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """``mask`` with every hole smaller than ``max_area_px`` filled."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if not n:
        return mask
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    small = areas < max_area_px
    small[0] = False
    return mask | small[labels]


def _drop_small(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """``mask`` without connected components (8-connected) smaller than ``min_area_px``."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if not n:
        return mask
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= min_area_px
    keep[0] = False
    return keep[labels]


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2
