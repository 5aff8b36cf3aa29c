"""The tissue mask and the patch grid on synthetic images: glass, pale stroma with gaps between
fibres, haematoxylin-dark nuclei, ink, dust, lumina, tissue at the slide's edge, and the same
section at two resolutions."""
import numpy as np
import pytest

from persam_lib.slides.base import downsample
from persam_lib.slides.patching import grid_coverage, grid_positions, mask_fraction, patch_grid
from persam_lib.slides.tissue import TissueConfig, clam_threshold_mask, pen_marks, segmentation_image, tissue_mask

GLASS = (243, 241, 242)
PALE_COLLAGEN = (236, 218, 229)  # dermal collagen: saturation 0.08, glass 0.01
HAEMATOXYLIN = (48, 25, 64)  # the median colour of nuclei and keratin on CMU-1
DARK_NUCLEI = (38, 18, 52)  # their darker half: below 60 in every channel, yet purple


def _section(mpp: float, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 1.6 × 1.2 mm field at ``mpp`` µm/px: glass with JPEG-like noise around an elliptic section
    of pale collagen fibres (about 15 µm wide, gaps about 15 µm), holding a 400 µm lumen (0.13 mm²,
    larger than the hole limit), a 200 µm gap (0.03 mm², smaller), a dust speck and a detached
    200 µm fragment on the glass. Returns the image and the regions (boolean masks) by name."""
    rng = np.random.default_rng(seed)
    h, w = int(round(1200 / mpp)), int(round(1600 / mpp))
    y, x = (np.mgrid[0:h, 0:w] + 0.5) * mpp  # µm
    section = ((x - 700) / 550) ** 2 + ((y - 600) / 450) ** 2 <= 1
    lumen = (x - 550) ** 2 + (y - 600) ** 2 <= 200**2
    gap = (x - 950) ** 2 + (y - 500) ** 2 <= 100**2
    fibres = np.sin(2 * np.pi * (y + 25 * np.sin(x / 60)) / 30) > 0
    fragment = (x - 1450) ** 2 + (y - 200) ** 2 <= 100**2
    dust = (np.abs(x - 1450) <= 15) & (np.abs(y - 1050) <= 15)
    image = np.empty((h, w, 3), dtype=np.float64)
    image[:] = GLASS
    image[(section & ~lumen & ~gap & fibres) | fragment] = PALE_COLLAGEN
    image[dust] = (120, 80, 130)
    image += rng.normal(0, 2, image.shape)
    regions = {"section": section & ~lumen & ~gap, "lumen": lumen, "gap": gap, "fragment": fragment, "dust": dust}
    return np.clip(image, 0, 255).astype(np.uint8), regions


def _at(region: np.ndarray, factor: int) -> np.ndarray:
    """A level-0 region at a segmentation image's downsample: pixels at least half inside."""
    h, w = region.shape[0] // factor, region.shape[1] // factor
    return region[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3)) >= 0.5


def _eroded(region: np.ndarray, pixels: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(region, iterations=pixels)


def test_tissue_mask_finds_tissue_and_ignores_glass():
    image = np.full((200, 300, 3), 245, dtype=np.uint8)
    image[50:150, 60:200] = (230, 150, 200)  # pink tissue
    image[10, 10] = (80, 40, 120)  # one speck of dust
    mask = tissue_mask(image, mpp=8.0)
    assert mask[60:140, 70:190].all()
    assert not mask[:40].any() and not mask[:, 220:].any()
    assert not tissue_mask(np.full((100, 100, 3), 250, dtype=np.uint8), mpp=8.0).any()


def test_pale_stroma_with_gaps_between_fibres_gives_a_solid_mask_and_glass_stays_out():
    level0, regions = _section(mpp=2.0)
    image, ds = segmentation_image(level0, 1.0, 4)  # 8 µm/px
    mask = tissue_mask(image, mpp=2.0 * ds)
    section, lumen, gap = (_at(regions[name], int(ds)) for name in ("section", "lumen", "gap"))
    assert mask[_eroded(section, 2)].mean() > 0.99  # solid: the gaps between fibres are tissue
    assert mask[_eroded(gap, 1)].all()  # a gap under the hole limit is filled
    assert mask[_eroded(lumen, 4)].mean() < 0.02  # a lumen over the limit stays a hole
    assert mask[_at(regions["fragment"], int(ds))].mean() > 0.95  # a detached fragment is kept
    assert not mask[_at(regions["dust"], int(ds))].any()  # a dust speck is not
    glass = ~_at(np.logical_or.reduce([regions[n] for n in ("section", "lumen", "gap", "fragment", "dust")]), int(ds))
    assert mask[_eroded(glass, 3)].mean() < 0.005


def test_fat_between_thin_septa_is_tissue():
    """A fat lobule: 80 µm adipocytes (glass-white inside) between 4 µm pink septa, which a
    segmentation pixel (8 µm) sees at a quarter of their saturation."""
    mpp = 2.0
    y, x = (np.mgrid[0:400, 0:400] + 0.5) * mpp  # 0.8 mm square
    lobule = (x - 400) ** 2 + (y - 400) ** 2 <= 300**2
    septa = (np.minimum(x % 80, 80 - x % 80) < 2) | (np.minimum(y % 80, 80 - y % 80) < 2)
    level0 = np.empty((400, 400, 3), dtype=np.uint8)
    level0[:] = GLASS
    level0[lobule & septa] = (230, 180, 210)
    image, ds = segmentation_image(level0, 1.0, 4)
    mask = tissue_mask(image, mpp=mpp * ds)
    lobule_at = _at(lobule, int(ds))
    assert mask[_eroded(lobule_at, 10)].mean() > 0.99  # every closed cell is filled (cells cut open by the lobule's edge are not holes)
    assert not mask[~_at(lobule | (np.hypot(x - 400, y - 400) <= 340), int(ds))].any()


def test_morphology_is_in_microns_so_two_resolutions_agree():
    level0, regions = _section(mpp=2.0, seed=1)
    masks, gap_filled, lumen_open = {}, {}, {}
    for factor in (2, 8):  # 4 and 16 µm/px
        image, ds = segmentation_image(level0, 1.0, factor)
        masks[factor] = tissue_mask(image, mpp=2.0 * ds)
        gap_filled[factor] = masks[factor][_eroded(_at(regions["gap"], factor), 1)].mean()
        lumen_open[factor] = 1 - masks[factor][_eroded(_at(regions["lumen"], factor), 2)].mean()
    fine_at_coarse = downsample((masks[2] * 255).astype(np.uint8)[..., None].repeat(3, -1), 4)[..., 0] >= 128
    agree = (fine_at_coarse & masks[8]).sum() / (fine_at_coarse | masks[8]).sum()
    assert agree > 0.95, agree
    assert min(gap_filled.values()) > 0.99 and min(lumen_open.values()) > 0.98  # the same holes filled at both
    # settings in pixels (what the mask used to have) would not agree: a 400-px hole limit is
    # 0.0064 mm² at 4 µm/px (the 0.03 mm² gap stays open) but 0.1 mm² at 16 µm/px (it is filled)
    for factor, expect_filled in ((2, False), (8, True)):
        image, ds = segmentation_image(level0, 1.0, factor)
        in_pixels = TissueConfig(max_hole_area_um2=400 * (2.0 * ds) ** 2)
        gap = tissue_mask(image, 2.0 * ds, in_pixels)[_eroded(_at(regions["gap"], factor), 1)].mean()
        assert (gap > 0.99) == expect_filled, (factor, gap)


def test_haematoxylin_dark_nuclei_and_keratin_are_tissue():
    image = np.full((200, 200, 3), 245, dtype=np.uint8)
    image[40:160, 40:160] = (225, 150, 195)  # eosin
    image[60:100, 60:140] = HAEMATOXYLIN  # a 320 × 640 µm band of keratin / packed nuclei
    image[70:90, 70:100] = DARK_NUCLEI
    rng = np.random.default_rng(0)
    for y, x in rng.integers(105, 155, (30, 2)):
        image[y : y + 2, x : x + 2] = DARK_NUCLEI  # single dark nuclei
    assert not pen_marks(image, mpp=8.0).any()
    mask = tissue_mask(image, mpp=8.0)
    assert mask[40:160, 40:160].all()


def test_tissue_mask_rejects_pen_marks_and_dust():
    image = np.full((300, 400, 3), 245, dtype=np.uint8)
    image[50:250, 50:350] = (232, 150, 200)  # pink tissue
    image[120:180, 120:180] = (110, 70, 160)  # a purple (haematoxylin-rich) lesion stays tissue
    image[20:30, 20:380] = (40, 70, 170)  # blue pen line
    image[260:275, 60:200] = (40, 150, 60)  # green pen
    image[280:290, 300:320] = (20, 20, 25)  # black ink dot
    for y, x in [(10, 390), (290, 10)]:
        image[y : y + 2, x : x + 2] = (150, 90, 140)  # dust specks
    mask = tissue_mask(image, mpp=8.0)
    assert mask[120:180, 120:180].all() and mask[60:240, 60:110].all()
    assert not mask[20:30].any() and not mask[258:].any()
    assert mask.sum() < 300 * 200 * 1.02


def test_black_ink_over_tissue_is_removed_but_dark_purple_is_not():
    image = np.full((200, 300, 3), 245, dtype=np.uint8)
    image[20:180, 20:280] = (225, 150, 195)
    image[60:140, 60:100] = (25, 25, 30)  # black marker over tissue
    image[60:140, 180:220] = DARK_NUCLEI
    mask = tissue_mask(image, mpp=8.0)
    assert not mask[60:140, 60:100].any()
    assert mask[60:140, 180:220].all()


def test_the_threshold_follows_the_glass_and_keeps_a_blank_slide_blank():
    from persam_lib.slides.tissue import saturation_threshold

    tinted = np.full((100, 100, 3), (240, 236, 222), dtype=np.uint8)  # yellowish glass: saturation 0.075
    tinted[30:70, 30:70] = (225, 150, 195)
    mask = tissue_mask(tinted, mpp=8.0)
    assert mask[30:70, 30:70].all() and mask.sum() == 40 * 40
    noisy = np.clip(np.random.default_rng(0).normal(248, 3, (100, 100, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(noisy, mpp=8.0).any()
    saturation = np.zeros((10, 10))
    assert saturation_threshold(saturation, np.full((10, 10, 3), 250, np.uint8)) == TissueConfig().min_saturation


def test_segmentation_image_box_averages_towards_the_target():
    image = np.random.default_rng(0).integers(0, 256, (130, 70, 3), dtype=np.uint8)
    reduced, ds = segmentation_image(image, 1.0, 16)
    assert ds == 16 and reduced.shape == (8, 4, 3)
    np.testing.assert_array_equal(reduced, downsample(image, 16))
    same, ds = segmentation_image(image, 16.0, 16)  # a stored level already at the target
    assert ds == 16 and same is image
    _, ds = segmentation_image(image, 4.0, 16)
    assert ds == 16


def test_config_is_validated():
    with pytest.raises(ValueError, match="'closing_radius_um' parameter"):
        TissueConfig(closing_radius_um=-1)
    with pytest.raises(ValueError, match="'max_saturation' parameter"):
        TissueConfig(min_saturation=0.2, max_saturation=0.1)
    with pytest.raises(ValueError, match="'mpp' parameter"):
        tissue_mask(np.zeros((4, 4, 3), np.uint8), mpp=0)


def test_patch_grid_respects_tissue_fraction():
    mask = np.zeros((64, 64), dtype=bool)
    mask[:32, :32] = True  # the top-left quarter, at downsample 16 -> 512 level-0 px
    coords = patch_grid(mask, 16, (1024, 1024), 256, 256, 0.5)
    assert sorted(map(tuple, coords)) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    overlapping = patch_grid(mask, 16, (1024, 1024), 256, 128, 0.5)
    kept = set(map(tuple, overlapping.tolist()))
    assert len(kept) == 15 and (128, 128) in kept and (384, 256) in kept  # half-covered patches are kept
    assert (384, 384) not in kept  # a quarter covered is not
    assert (384, 384) in set(map(tuple, patch_grid(mask, 16, (1024, 1024), 256, 128, 0.25).tolist()))


def test_tissue_in_the_last_strip_gets_an_edge_patch_inside_the_slide():
    width, height = 1000, 700  # neither a whole number of 256-px patches
    mask = np.zeros((height // 4, width // 4), dtype=bool)
    mask[:, -25:] = True  # tissue only in the last 100 px on the right
    mask[-25:, :] = True  # and the last 100 px at the bottom
    coords = patch_grid(mask, 4, (width, height), 256, 256, 0.25)
    assert len(coords) and (coords >= 0).all()
    assert (coords[:, 0] + 256 <= width).all() and (coords[:, 1] + 256 <= height).all()
    assert {744} <= set(coords[:, 0].tolist()) and {444} <= set(coords[:, 1].tolist())  # flush with the edges
    covered = np.zeros((height, width), dtype=bool)
    for x, y in coords:
        covered[y : y + 256, x : x + 256] = True
    assert covered[:, -100:].all() and covered[-100:, :].all()
    assert list(grid_positions(1000, 256, 256)) == [0, 256, 512, 744]
    assert list(grid_positions(1024, 256, 128)) == [0, 128, 256, 384, 512, 640, 768]  # already flush: nothing added
    assert list(grid_positions(200, 256, 256)) == []


def test_grid_coverage_counts_tissue_inside_patches_and_patches_holding_tissue():
    reference = np.zeros((512, 512), dtype=bool)
    reference[:256, :256] = True  # one patch full of tissue
    reference[256:320, 256:512] = True  # a patch a quarter full
    coverage = grid_coverage(reference, 1.0, np.array([[0, 0], [256, 256], [0, 256]]), 256)
    assert coverage.patches == 3 and coverage.tissue_captured == 1.0
    assert coverage.patches_with_tissue == pytest.approx(2 / 3)  # the empty patch holds none
    half = grid_coverage(reference, 1.0, np.array([[0, 0]]), 256)
    assert half.tissue_captured == pytest.approx(256 * 256 / reference.sum())
    np.testing.assert_allclose(mask_fraction(reference, 1.0, np.array([[256, 256]]), 256), [0.25])


def test_clam_threshold_marks_stained_pixels_only():
    image = np.full((60, 60, 3), 245, dtype=np.uint8)
    image[10:50, 10:50] = (236, 218, 229)  # pale collagen: saturation 19/255
    image[30, 30] = (120, 60, 120)  # a lone dark pixel is median-filtered away
    image[5, 5] = (120, 60, 120)
    reference = clam_threshold_mask(image)
    assert reference[14:46, 14:46].all() and not reference[:8, :8].any()
