"""Procedural H&E-like tissue for the demo cohort.

A slide is a pink (eosin) tissue section on white glass with purple (haematoxylin) nuclei,
and two lesion regions of different *kinds*:

* a **nodular** region (round, lilac cytoplasm), and
* a **diffuse** region (irregular sheet, pale cytoplasm).

Each region shows one of two *phenotypes*: **A** (large, pale, sparse nuclei) or **B** (small,
dark, crowded nuclei). Which region decides the patient's label depends on the clinical record
(see `persam_lib.cohort.demo`), which is the whole point of the cohort.

Rendering is built for speed (a slide in well under a second): the layout and stain are drawn
at 1/4 resolution and upsampled, texture comes from a tiled noise patch, and nuclei are stamped
as anti-aliased discs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# Label values of the ground-truth region mask.
BACKGROUND, TISSUE, NODULAR, DIFFUSE = 0, 1, 2, 3
REGION_LABELS = {"background": BACKGROUND, "tissue": TISSUE, "nodular": NODULAR, "diffuse": DIFFUSE}

# (density of nuclei per 1000 px^2, mean radius px, nucleus RGB)
_NORMAL = (0.5, 3.5, (100, 62, 150))
_PHENOTYPES = {
    "A": (0.8, 7.0, (125, 85, 175)),  # large vesicular nuclei
    "B": (3.6, 3.0, (55, 28, 105)),  # small dark crowded nuclei
    "C": (1.8, 4.8, (150, 50, 95)),  # mid-sized, sparse, magenta-red nuclei (the third subtype)
}
_CYTOPLASM = np.array(
    [
        (246, 245, 248),  # glass
        (236, 160, 200),  # tissue: eosin
        (200, 150, 212),  # nodular: lilac
        (236, 186, 214),  # diffuse: pale pink, still clearly stained (tissue masks must keep it)
    ],
    dtype=np.float32,
)
LABEL_DOWNSAMPLE = _LOWRES = 4  # layout, stain and the label map are drawn at 1/4 resolution


@dataclass(frozen=True)
class SlideDesign:
    """What one demo slide shows: its size and the phenotype of each region."""

    width: int
    height: int
    nodular_phenotype: str  # "A" or "B"
    diffuse_phenotype: str
    region_radius: int  # level-0 px


def render_slide(design: SlideDesign, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render a slide: level-0 RGB (H, W, 3) uint8 and the region label map at 1/4 resolution."""
    small_labels = _layout(design, rng)
    rgb = _paint(small_labels, design, rng)
    return rgb, small_labels


def _smooth_noise(shape: tuple[int, int], scale: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise (unit std) of ``shape``, built at 1/scale and upsampled."""
    small = (max(shape[0] // scale, 2) + 1, max(shape[1] // scale, 2) + 1)
    noise = ndimage.gaussian_filter(rng.standard_normal(small), sigma=1.0)
    noise /= noise.std() + 1e-9
    zoomed = ndimage.zoom(noise, (shape[0] / small[0] * 1.0001, shape[1] / small[1] * 1.0001), order=1)
    return zoomed[: shape[0], : shape[1]]


def _layout(design: SlideDesign, rng: np.random.Generator) -> np.ndarray:
    """Region labels at 1/_LOWRES resolution: glass, tissue, nodular and diffuse regions."""
    h, w = design.height // _LOWRES, design.width // _LOWRES
    r = design.region_radius / _LOWRES
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.46, 0.54), h * rng.uniform(0.46, 0.54)
    ellipse = ((xx - cx) / (0.44 * w)) ** 2 + ((yy - cy) / (0.42 * h)) ** 2
    tissue = ellipse + 0.18 * _smooth_noise((h, w), max(w // 10, 4), rng) < 1.0
    labels = np.where(tissue, 1, 0).astype(np.uint8)

    # the two regions sit on opposite sides of the section, so they never overlap
    angle = rng.uniform(0, 2 * np.pi)
    offset = 0.22 * min(w, h) + 0.6 * r
    nx, ny = cx + offset * np.cos(angle), cy + offset * np.sin(angle)
    dx, dy = cx - offset * np.cos(angle), cy - offset * np.sin(angle)
    wobble = _smooth_noise((h, w), max(int(r // 3), 3), rng)
    nodular = np.hypot(xx - nx, yy - ny) + 0.08 * r * wobble < r
    diffuse = np.hypot((xx - dx) / 1.25, (yy - dy) / 0.8) + 0.3 * r * wobble < r
    labels[nodular & tissue] = NODULAR
    labels[diffuse & tissue & ~nodular] = DIFFUSE
    return labels


def _paint(small_labels: np.ndarray, design: SlideDesign, rng: np.random.Generator) -> np.ndarray:
    h, w = design.height, design.width
    # stain at low resolution, upsampled bilinearly
    base = _CYTOPLASM[small_labels]
    stain = _smooth_noise(small_labels.shape, 12, rng)[..., None] * np.array([6, 10, 7], dtype=np.float32)
    base = np.where(small_labels[..., None] > 0, base + stain, base)
    base = ndimage.uniform_filter(base, size=(3, 3, 1))
    base_img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    rgb = np.asarray(base_img).astype(np.int16)

    # eosin fibres: one noise patch, tiled, only on tissue
    tile = ndimage.gaussian_filter(rng.standard_normal((512, 512)), sigma=(0.8, 3.0))
    tile = (tile / tile.std() * 9).astype(np.int16)
    fibres = np.tile(tile, (h // 512 + 1, w // 512 + 1))[:h, :w]
    on_tissue = np.repeat(np.repeat(small_labels > 0, _LOWRES, 0), _LOWRES, 1)[:h, :w]
    rgb += (fibres * on_tissue)[..., None] * np.array([1, 2, 1], dtype=np.int16)[None, None]
    rgb = np.clip(rgb, 0, 255).astype(np.float32)

    _stamp_nuclei(rgb, small_labels, design, rng)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _stamp_nuclei(rgb: np.ndarray, small_labels: np.ndarray, design: SlideDesign, rng: np.random.Generator) -> None:
    """Stamp anti-aliased nuclei in place; density, size and colour depend on the region."""
    h, w = rgb.shape[:2]
    params = {TISSUE: _NORMAL, NODULAR: _PHENOTYPES[design.nodular_phenotype], DIFFUSE: _PHENOTYPES[design.diffuse_phenotype]}
    max_density = max(p[0] for p in params.values()) / 1000.0
    n = rng.poisson(max_density * h * w)
    px = rng.uniform(0, w, n)
    py = rng.uniform(0, h, n)
    lab = small_labels[np.minimum((py // _LOWRES).astype(int), small_labels.shape[0] - 1), np.minimum((px // _LOWRES).astype(int), small_labels.shape[1] - 1)]
    density = np.zeros(n)
    for label, (dens, _, _) in params.items():
        density[lab == label] = dens / 1000.0
    keep = rng.random(n) < density / max_density
    px, py, lab = px[keep], py[keep], lab[keep]
    for label, (_, radius, colour) in params.items():
        sel = np.flatnonzero(lab == label)
        radii = radius * rng.uniform(0.75, 1.25, len(sel))
        colours = np.asarray(colour, dtype=np.float32) + rng.normal(0, 10, (len(sel), 3)).astype(np.float32)
        elong = rng.uniform(1.0, 1.35, len(sel))
        theta = rng.uniform(0, np.pi, len(sel))
        for i, k in enumerate(sel):
            _stamp(rgb, px[k], py[k], radii[i], elong[i], theta[i], colours[i])


def _stamp(rgb: np.ndarray, x: float, y: float, radius: float, elong: float, theta: float, colour: np.ndarray) -> None:
    half = int(np.ceil(radius * elong)) + 2
    x0, y0 = int(x) - half, int(y) - half
    x1, y1 = int(x) + half + 1, int(y) + half + 1
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, rgb.shape[1]), min(y1, rgb.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    # a row and a column of offsets, broadcast: the same values, element by element, as a full
    # grid of them, at a fraction of the cost for the thousands of nuclei of a slide
    ux = np.arange(cx0, cx1, dtype=np.float32)[None, :] - x
    uy = np.arange(cy0, cy1, dtype=np.float32)[:, None] - y
    c, s = np.cos(theta), np.sin(theta)
    d = np.sqrt(((c * ux + s * uy) / elong) ** 2 + (-s * ux + c * uy) ** 2)
    alpha = np.minimum(np.maximum(radius + 0.5 - d, 0.0), 1.0)[..., None] * 0.92
    shade = colour * (0.82 + 0.18 * np.minimum(np.maximum(d / radius, 0), 1))[..., None]  # darker rim: chromatin at the membrane
    patch = rgb[cy0:cy1, cx0:cx1]
    patch *= 1.0 - alpha
    patch += alpha * shade
