"""Behaviour of the procedural chest radiographs: anatomy, lesions, and phenotypes told apart only by texture."""

import numpy as np
import pytest
from scipy import ndimage

from persam_lib.cohort.demo_radiograph import (
    BACKGROUND,
    BODY,
    NODULE,
    OPACITY,
    REGION_LABELS,
    RadiographDesign,
    render_radiograph,
)


def _render(seed: int, nodule: str = "A", opacity: str = "A", **kwargs) -> tuple[np.ndarray, np.ndarray]:
    return render_radiograph(RadiographDesign(nodule_phenotype=nodule, opacity_phenotype=opacity, **kwargs), np.random.default_rng(seed))


def _ring(lesion: np.ndarray, inner: int = 3, outer: int = 8) -> np.ndarray:
    """Pixels a few px outside a lesion: the lung tissue around it."""
    return ndimage.binary_dilation(lesion, iterations=outer) & ~ndimage.binary_dilation(lesion, iterations=inner)


def _texture(image: np.ndarray, lesion: np.ndarray) -> float:
    """Std of the high-pass-filtered image inside the lesion (away from its edge)."""
    f = image.astype(np.float64)
    high = f - ndimage.gaussian_filter(f, 2.0)
    return float(high[ndimage.binary_erosion(lesion, iterations=3)].std())


def test_image_and_mask_shapes_dtypes_and_ranges():
    image, mask = _render(0)
    assert image.shape == mask.shape == (256, 256)
    assert image.dtype == np.uint16 and mask.dtype == np.uint8
    assert image.max() <= 4095
    assert set(np.unique(mask)) == {BACKGROUND, BODY, NODULE, OPACITY}
    assert REGION_LABELS == {"background": 0, "body": 1, "nodule": 2, "opacity": 3}
    air, body = image[mask == BACKGROUND], image[mask > BACKGROUND]
    assert air.mean() < 400 < body.mean()  # dark air, brighter body (displayed as on a PA film)
    assert 0.4 < (mask > BACKGROUND).mean() < 0.9


def test_other_sizes_render_at_their_size():
    image, mask = _render(1, size=128, lesion_radius=11)
    assert image.shape == mask.shape == (128, 128)
    assert (mask == NODULE).sum() > 0.6 * np.pi * 11**2


@pytest.mark.parametrize("phenotype", ["A", "B"])
def test_each_lesion_is_one_compact_region_and_the_opacity_is_larger(phenotype):
    ratios = []
    for seed in range(6):
        _, mask = _render(seed, phenotype, phenotype)
        nodule, opacity = mask == NODULE, mask == OPACITY
        assert ndimage.label(nodule)[1] == 1 and ndimage.label(opacity)[1] == 1
        assert 0.75 * np.pi * 22**2 < nodule.sum() < 1.3 * np.pi * 22**2
        ratios.append(opacity.sum() / nodule.sum())
        # the nodule is round: it fills most of its bounding circle
        ys, xs = np.nonzero(nodule)
        radius = np.hypot(ys - ys.mean(), xs - xs.mean()).max()
        assert nodule.sum() > 0.75 * np.pi * radius**2
    assert 1.4 < np.mean(ratios) < 2.2 and min(ratios) > 1.2


def test_lesions_sit_in_the_lungs_one_per_side():
    sides = []
    for seed in range(10):
        image, mask = _render(seed)
        body_x = np.nonzero(mask[mask.shape[0] // 2] > BACKGROUND)[0]
        midline = body_x.mean()
        x = {label: np.nonzero(mask == label)[1].mean() for label in (NODULE, OPACITY)}
        assert (x[NODULE] - midline) * (x[OPACITY] - midline) < 0  # opposite lungs, so never overlapping
        sides.append(x[NODULE] < midline)
        body_median = np.median(image[mask > BACKGROUND])
        for label in (NODULE, OPACITY):
            ring = _ring(mask == label)
            assert (mask[ring] == BODY).all()  # surrounded by body, not air
            assert image[ring].mean() < 0.8 * body_median  # ... and by dark lung, not soft tissue or mediastinum
    assert 0 < sum(sides) < len(sides)  # which lung gets the nodule is random


def test_same_seed_same_image_other_seed_other_image():
    a_image, a_mask = _render(7, "B", "A")
    b_image, b_mask = _render(7, "B", "A")
    c_image, c_mask = _render(8, "B", "A")
    assert np.array_equal(a_image, b_image) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_image, c_image) and not np.array_equal(a_mask, c_mask)


@pytest.mark.parametrize("label", [NODULE, OPACITY])
def test_phenotypes_differ_in_texture_not_in_brightness(label):
    """The cohort's premise: A and B are only learnable through texture."""
    means, textures = {"A": [], "B": []}, {"A": [], "B": []}
    for phenotype, first_seed in (("A", 100), ("B", 150)):  # different images, not the same one re-textured
        for seed in range(first_seed, first_seed + 8):
            image, mask = _render(seed, phenotype, phenotype)
            lesion = mask == label
            means[phenotype].append(image[lesion].mean())
            textures[phenotype].append(_texture(image, lesion))
    mean_a, mean_b = np.mean(means["A"]), np.mean(means["B"])
    assert abs(mean_a - mean_b) / mean_a < 0.10
    assert np.mean(textures["B"]) > 1.5 * np.mean(textures["A"])
    assert min(textures["B"]) > max(textures["A"])  # separable image by image, not just on average


@pytest.mark.parametrize("phenotype", ["A", "B"])
def test_lesions_are_brighter_than_the_surrounding_lung_and_the_nodule_denser_than_the_opacity(phenotype):
    for seed in range(5):
        image, mask = _render(200 + seed, phenotype, phenotype)
        contrast = {}
        for label in (NODULE, OPACITY):
            lesion = mask == label
            contrast[label] = image[lesion].mean() - image[_ring(lesion)].mean()
        assert contrast[OPACITY] > 200, (seed, contrast)  # ground glass: about 5% of the 12-bit range
        assert contrast[NODULE] > 1.6 * contrast[OPACITY], (seed, contrast)  # solid: a patch shows its kind by density


def test_invalid_designs_say_what_to_change():
    with pytest.raises(ValueError, match=r"nodule_phenotype.*\['A', 'B'\].*'C'"):
        _render(0, "C", "A")
    with pytest.raises(ValueError, match="opacity_phenotype"):
        _render(0, "A", "b")
    with pytest.raises(ValueError, match="lesion_radius"):
        _render(0, lesion_radius=60)
