"""Procedural chest-radiograph-like images for a generated demo cohort.

A radiograph is a posteroanterior (PA) chest film as it is displayed: air is dark, the body is
grey, the lungs are dark fields inside it, and dense structures (spine, mediastinum, heart, ribs)
are bright. Each image carries two lesions of different *kinds*, one in each lung (which lung
gets which kind is random):

* a **nodule**: solid (dense), compact, round, sharply defined, and
* an **opacity**: ground glass (about half the nodule's density), larger (about 1.75x the
  nodule's area), irregular, soft-edged.

Each lesion shows one of two *phenotypes*: **A** (homogeneous, smooth density) or **B**
(mottled: granules of about 2-4 px at size 256, of the same amplitude in both kinds). Both
phenotypes add the *same* mean density inside the lesion, so a model can tell them apart only by
texture, never by brightness; the kinds differ by density, shape and size — a single patch shows
which kind it belongs to, as a slide's tile does by its stain. This mirrors the slide cohort of
`persam_lib.cohort.demo_tissue`, where the clinical record says which lesion decides the label.

Everything is drawn in float "attenuation" units (0 = air, 1 = densest) and mapped to 12-bit
counts at the end. Sizes are given at the reference size 256 and scaled by ``size / 256``,
except ``lesion_radius``, which is in pixels of the rendered image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

# Label values of the ground-truth mask.
BACKGROUND, BODY, NODULE, OPACITY = 0, 1, 2, 3
REGION_LABELS = {"background": BACKGROUND, "body": BODY, "nodule": NODULE, "opacity": OPACITY}

PHENOTYPES = ("A", "B")
MAX_COUNT = 4095  # 12-bit detector
_REF = 256.0  # the reference size at which the anatomy's pixel constants below are given

# attenuation levels (0..1, displayed brightness)
_AIR = 0.05
# mean density a lesion adds on top of the lung, for both phenotypes: a solid nodule, a ground-glass
# opacity (a patch of the image tells which kind it shows by its density, as a tile of a slide does
# by its stain; the phenotype only by its texture)
_LESION_DENSITY = {NODULE: 0.30, OPACITY: 0.14}
_TEXTURE_AMPLITUDE = 0.075  # B's mottling, in attenuation units: equally visible in both kinds
_OPACITY_AREA_RATIO = 1.75  # opacity area / nodule area
_NOISE_STD = 0.009  # quantum-like noise, in attenuation units at mid grey


@dataclass(frozen=True)
class RadiographDesign:
    """What one demo radiograph shows: its size, the phenotype of each lesion and the nodule's radius.

    ``lesion_radius`` is the nodule's radius in pixels of the rendered (``size`` x ``size``) image;
    22 suits the default 256, so scale it with ``size`` (e.g. 44 at 512). The opacity's area is
    about 1.75x the nodule's.
    """

    size: int = 256
    nodule_phenotype: str = "A"  # "A" (homogeneous) or "B" (mottled)
    opacity_phenotype: str = "A"
    lesion_radius: int = 22


@dataclass(frozen=True)
class _Anatomy:
    """The lesion-free film and the regions lesions are placed in."""

    attenuation: np.ndarray  # (H, W) float32, 0..~1
    body: np.ndarray  # (H, W) bool
    lungs: tuple[np.ndarray, np.ndarray]  # image-left and image-right lung fields, (H, W) bool each


def render_radiograph(design: RadiographDesign, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one PA chest radiograph with a nodule and an opacity, one in each lung.

    Returns ``(image, mask)``: ``image`` is (size, size) uint16 with 12-bit values 0..4095
    (higher = brighter = more attenuation, as a chest film is displayed) and ``mask`` is
    (size, size) uint8 with ``REGION_LABELS`` (air, body, nodule, opacity). Deterministic given
    ``rng``; a 256 x 256 image takes about 15-25 ms on one CPU core.
    """
    _validate(design)
    anatomy = _anatomy(design.size, rng)
    film = anatomy.attenuation.copy()
    mask = np.where(anatomy.body, BODY, BACKGROUND).astype(np.uint8)

    nodule_lung = int(rng.integers(2))  # which lung gets the nodule; the opacity goes in the other
    kinds = ((NODULE, design.nodule_phenotype, nodule_lung), (OPACITY, design.opacity_phenotype, 1 - nodule_lung))
    for label, phenotype, lung in kinds:
        for _ in range(8):  # a rare lobulated opacity may not fit a small lung: draw another shape
            profile, inside = _nodule_profile(design, rng) if label == NODULE else _opacity_profile(design, rng)
            corner = _place(inside, anatomy.lungs[lung], rng)
            if corner is not None:
                break
        else:
            raise ValueError(f"The lesion does not fit in the lung field at size {design.size}: lower RadiographDesign.lesion_radius.")
        y0, x0 = corner
        h, w = profile.shape
        density = _LESION_DENSITY[label] * profile * _texture(profile, inside, phenotype, design.size, rng, _TEXTURE_AMPLITUDE / _LESION_DENSITY[label])
        film[y0 : y0 + h, x0 : x0 + w] += density
        mask[y0 : y0 + h, x0 : x0 + w][inside] = label

    noise_std = _NOISE_STD * np.sqrt(np.clip(film, 0.02, None) / 0.5)  # brighter = fewer photons = noisier
    film += noise_std * rng.standard_normal(film.shape, dtype=np.float32)
    image = np.clip(film * MAX_COUNT + 0.5, 0, MAX_COUNT).astype(np.uint16)
    return image, mask


def _validate(design: RadiographDesign) -> None:
    """Raise a ValueError that says what to change when the design cannot be rendered."""
    for field in ("nodule_phenotype", "opacity_phenotype"):
        value = getattr(design, field)
        if value not in PHENOTYPES:
            raise ValueError(f"The '{field}' of RadiographDesign must be one of {list(PHENOTYPES)}. Got {value!r} instead.")
    if not isinstance(design.size, (int, np.integer)) or design.size < 64:
        raise ValueError(f"The 'size' of RadiographDesign must be an int >= 64. Got {design.size!r} instead.")
    largest = int(0.09 * design.size)
    smallest = max(3, int(round(6 * design.size / _REF)))
    if not smallest <= design.lesion_radius <= largest:
        raise ValueError(
            f"The 'lesion_radius' of RadiographDesign must be in [{smallest}, {largest}] px at size {design.size} "
            f"(so that both lesions fit in the lungs; 22 suits size 256, scale it with size). Got {design.lesion_radius} instead."
        )


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise (unit std) of ``shape`` with features about ``scale`` px wide."""
    small = (max(int(shape[0] / scale), 2) + 2, max(int(shape[1] / scale), 2) + 2)
    noise = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma=0.8)
    noise /= noise.std() + 1e-9
    zoomed = ndimage.zoom(noise, (shape[0] / small[0] * 1.0001, shape[1] / small[1] * 1.0001), order=1)
    return zoomed[: shape[0], : shape[1]]


def _anatomy(size: int, rng: np.random.Generator) -> _Anatomy:
    """Draw the lesion-free chest: torso, soft tissue, lungs, mediastinum, heart, spine, ribs."""
    s = size / _REF
    yy = np.arange(size, dtype=np.float32)[:, None]  # (H, 1): terms that depend on one axis stay 1-D
    xx = np.arange(size, dtype=np.float32)[None, :]  # (1, W)
    cx = size * (0.5 + rng.uniform(-0.025, 0.025))
    width = rng.uniform(0.95, 1.05)  # torso width factor
    top = size * rng.uniform(-0.02, 0.03)  # vertical shift of the whole chest
    ax_mid = np.abs(xx - cx)  # (1, W) distance from the midline

    # torso: a neck widening into shoulders, a slight taper below; it runs off the bottom
    v = (yy - top) / size
    shoulders = 1.0 / (1.0 + np.exp(-(v - 0.13) / 0.035))
    half_width = size * width * (0.085 + 0.375 * shoulders - 0.03 * np.clip(v - 0.35, 0, None))
    edge = half_width - ax_mid  # (H, W), > 0 inside the body (px)
    body_soft = 1.0 / (1.0 + np.exp(-edge / (1.5 * s)))
    body = body_soft > 0.5

    # soft tissue: thin at the skin, thicker inwards, denser towards the abdomen
    depth = np.clip(edge / (0.16 * size), 0, 1)
    att = 0.36 + 0.26 * np.sqrt(depth) + 0.08 * np.clip(v - 0.55, 0, None)

    # lungs: two tall rounded fields with a domed diaphragm; the heart takes the lower medial part
    heart_x, heart_y = cx + size * rng.uniform(0.05, 0.07), top + size * rng.uniform(0.67, 0.7)
    heart = ((xx - heart_x) / (0.165 * size)) ** 2 + ((yy - heart_y) / (0.125 * size)) ** 2
    lungs = []
    for side in (-1.0, 1.0):
        lx = cx + side * size * width * rng.uniform(0.2, 0.21)
        ly = top + size * rng.uniform(0.45, 0.47)
        ax, ay = size * width * 0.165, size * rng.uniform(0.29, 0.31)
        w = (yy - ly) / ay
        u = (xx - lx) / (ax * (0.82 + 0.18 * np.clip(w + 0.3, -1, 1)))  # narrow apex, wide base
        au, aw = np.abs(u), np.abs(w)
        shape = np.where(side * u > 0, u * u, au * au * au) + np.where(w < 0, w * w, aw * aw * aw)  # rounder laterally and at the apex
        dome = (yy - ly - 0.78 * ay) + 0.35 * ay * u * u  # diaphragm: lower laterally (costophrenic angle)
        field = (shape < 1.0) & (dome < 0) & (heart > 1.0)
        lungs.append(ndimage.binary_opening(field, iterations=max(1, int(2 * s))))
    lung_soft = ndimage.gaussian_filter((lungs[0] | lungs[1]).astype(np.float32), 2.0 * s)

    # lungs are darker; denser near the hila (vessels), clearer laterally
    hilum = np.exp(-(((ax_mid - 0.1 * size) / (0.12 * size)) ** 2)) * np.exp(-(((yy - top - 0.45 * size) / (0.2 * size)) ** 2))
    att -= lung_soft * (0.34 - 0.07 * hilum)
    # the heart shadow adds a little depth to the mediastinum (the lungs already stop there)
    att += 0.025 * np.sqrt(np.clip(1.0 - heart, 0, 1))
    # spine: a bright vertical strip with faint vertebral banding
    spine = np.exp(-((ax_mid / (0.045 * size)) ** 4))
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - top) / (0.07 * size))
    att += spine * (0.09 + 0.025 * vertebrae)
    # clavicles: two bright bars from the sternum out and up towards the shoulders
    t = ax_mid / (0.38 * size)  # 0 at the midline, 1 at the shoulder
    centre = top + size * (0.2 - 0.09 * t + 0.03 * t**2)
    along = (t < 1.05) / (1.0 + np.exp(-(t - 0.1) / 0.02))
    att += 0.08 * along * np.exp(-(((yy - centre) / (0.012 * size)) ** 4))
    att += _ribs(xx, yy, cx, top, size, width, rng) * (0.35 + 0.65 * lung_soft)

    att = att * body_soft + _AIR * (1.0 - body_soft)
    # low-frequency variation (exposure, tissue thickness); the air is not perfectly flat either
    att += (0.008 + 0.012 * body_soft) * _smooth_noise((size, size), 0.25 * size, rng)
    return _Anatomy(att.astype(np.float32), body, (lungs[0], lungs[1]))


def _ribs(xx: np.ndarray, yy: np.ndarray, cx: float, top: float, size: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Faint posterior rib arcs: from the spine they rise a little, then curve down towards the flank.

    All ribs of one side are one periodic pattern along a curved coordinate, so the cost is a
    couple of passes over the image, not one per rib.
    """
    s = size / _REF
    u = np.abs(xx - cx) / (size * width)  # (1, W): 0 at the spine, ~0.4 at the flank
    along = (u > 0.045) & (u < 0.43)
    # curved coordinate: constant along each rib
    q = yy - top + size * (0.3 * u - 1.15 * u**2)
    spacing = size * rng.uniform(0.072, 0.08)
    phase = (q - size * 0.19) / spacing
    frac = (phase - np.round(phase)) * spacing / (3.0 * s)  # distance to the nearest rib centre, in rib half-widths
    band = np.exp(-(frac**2)) + 0.4 * np.exp(-(((np.abs(frac) - 1.0) / 0.35) ** 2))  # brighter cortex at both edges
    count = (phase > -0.5) & (phase < 6.5)  # seven ribs over the lungs
    return (0.04 * band * (along & count)).astype(np.float32)


def _nodule_profile(design: RadiographDesign, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A round nodule in its own box: density profile (mean ~1 inside; sharp edge, slightly domed) and its mask."""
    r = design.lesion_radius * rng.uniform(0.95, 1.05)
    half = int(np.ceil(r)) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    ecc = rng.uniform(1.0, 1.12)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    d = np.hypot((c * xx + s * yy) * np.sqrt(ecc), (-s * xx + c * yy) / np.sqrt(ecc))
    edge = np.clip((r - d) / 1.2 + 0.5, 0, 1)  # ~1 px anti-aliased rim: well defined
    dome = 0.8 + 0.2 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))  # a sphere projects thicker in the middle
    return (edge * dome / 0.93).astype(np.float32), d < r  # /0.93: mean inside ~1 (the density comes from _LESION_DENSITY)


def _opacity_profile(design: RadiographDesign, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular, soft-edged patch in its own box: density profile (mean ~1 inside) and its mask.

    The mask (inside the outline, where the profile is half its plateau) has about
    _OPACITY_AREA_RATIO x the nodule's area; the density fades out beyond it.
    """
    harmonics = [(k, rng.uniform(0.04, 0.09) / k**0.3, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]
    spread = 1.0 + sum(a * a / 2 for _, a, _ in harmonics)  # area factor of the lobulated outline
    radius = design.lesion_radius * np.sqrt(_OPACITY_AREA_RATIO / spread) * rng.uniform(0.96, 1.04)
    aspect = rng.uniform(1.15, 1.45)  # taller than wide, like the lungs
    max_r = radius * np.sqrt(aspect) * (1 + sum(a for _, a, _ in harmonics)) * 1.12
    half = int(np.ceil(max_r)) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    tilt = rng.uniform(-0.5, 0.5)
    c, s = np.cos(tilt), np.sin(tilt)
    ux, uy = (c * xx + s * yy) * np.sqrt(aspect), (-s * xx + c * yy) / np.sqrt(aspect)
    d, angle = np.hypot(ux, uy), np.arctan2(uy, ux)
    outline = radius * (1 + sum(a * np.cos(k * angle + p) for k, a, p in harmonics))
    outline *= 1 + 0.06 * _smooth_noise(d.shape, max(radius / 2.5, 3.0), rng)  # small-scale ragged edge
    ramp = 0.5 * radius  # a wide soft edge: the density fades over half the radius
    t = np.clip((outline - d) / ramp + 0.5, 0, 1)
    profile = t * t * (3 - 2 * t)  # smoothstep: 0.5 exactly on the outline
    return (profile / 0.85).astype(np.float32), d < outline  # /0.85: mean inside ~1 (the density comes from _LESION_DENSITY)


def _texture(profile: np.ndarray, inside: np.ndarray, phenotype: str, size: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Multiplicative texture of a lesion, normalised so that ``profile * texture`` keeps its mean inside the mask.

    A is nearly flat (a faint, broad undulation); B is mottled: band-passed noise whose granules
    are ~2-4 px at size 256, large enough to survive a 2x downsampling, with relative ``amplitude``. Normalising the
    profile-weighted mean makes A and B add the same mean density inside the lesion mask.
    """
    s = size / _REF
    if phenotype == "A":
        texture = 1.0 + 0.04 * _smooth_noise(profile.shape, 10 * s, rng)
    else:
        white = rng.standard_normal(profile.shape).astype(np.float32)
        band = ndimage.gaussian_filter(white, 0.9 * s) - ndimage.gaussian_filter(white, 2.6 * s)
        band /= band.std() + 1e-9
        texture = np.clip(1.0 + amplitude * band, 0.1, None)
    weighted = profile[inside]
    texture = texture * (weighted.sum() / (weighted * texture[inside]).sum())
    return texture.astype(np.float32)


def _place(inside: np.ndarray, lung: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """Top-left corner of a random position where the lesion mask (with a margin) lies inside ``lung``, or None."""
    margin = max(1, round(2 * lung.shape[0] / _REF))
    footprint = ndimage.binary_dilation(inside, iterations=margin).astype(np.float32)
    outside = (~lung).astype(np.float32)
    # number of footprint pixels that would fall outside the lung, for every centre position
    hits = signal.fftconvolve(outside, footprint[::-1, ::-1], mode="same")
    h, w = inside.shape
    size = lung.shape[0]
    valid = hits < 0.5
    valid[: h // 2, :] = valid[size - (h - h // 2) + 1 :, :] = False
    valid[:, : w // 2] = valid[:, size - (w - w // 2) + 1 :] = False
    ys, xs = np.nonzero(valid)
    if len(ys) == 0:
        return None
    k = int(rng.integers(len(ys)))
    return int(ys[k]) - h // 2, int(xs[k]) - w // 2
