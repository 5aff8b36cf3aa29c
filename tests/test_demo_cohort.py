import numpy as np
import openslide
import pytest
from PIL import Image

from persam_lib.cohort.demo import DIAGNOSTIC_REGION, DemoConfig, _design_patients
from persam_lib.cohort.demo_tissue import DIFFUSE, NODULAR
from persam_lib.cohort.truth import REGIONS_FILE, TRUTH_FILE, load_truth, mask_file
from persam_lib.slides.tiff_writer import write_pyramidal_tiff


def test_openslide_opens_demo_slides_with_levels_and_mpp(tiny_cohort):
    for path in tiny_cohort.slides["path"]:
        slide = openslide.OpenSlide(path)
        assert slide.level_count >= 3
        assert [round(d) for d in slide.level_downsamples[:3]] == [1, 4, 16]
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
        assert slide.level_dimensions[0] == (1536, 1152)
        slide.close()


def test_slides_are_tiled_jpeg_tiffs(tiny_cohort):
    import tifffile

    with tifffile.TiffFile(tiny_cohort.slides["path"].iloc[0]) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG


def test_tissue_is_stained_and_glass_is_white(tiny_cohort):
    first = tiny_cohort.slides.iloc[0]
    slide = openslide.OpenSlide(first["path"])
    thumb = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]).convert("RGB")).astype(float)
    mask = load_truth(tiny_cohort).mask(first["slide_id"])
    labels = np.asarray(Image.fromarray(mask).resize(thumb.shape[1::-1], Image.NEAREST))
    glass, tissue = thumb[labels == 0], thumb[labels > 0]
    assert glass.mean() > 235  # white background
    assert (tissue[:, 1] < tissue[:, 0]).mean() > 0.9  # pink/purple: green below red


def test_design_puts_the_science_in_the_data():
    table = _design_patients(DemoConfig(patients=400, seed=1), np.random.default_rng(1))
    deciding = np.where(table["site"] == "nodal", table["nodular_phenotype"], table["diffuse_phenotype"])
    assert (deciding == table["subtype"]).all()  # the deciding field picks the region that decides
    assert 0.4 < table["disagree"].mean() < 0.6  # about half the regions disagree
    image_only_ceiling = 1 - table["disagree"].mean() / 2
    assert image_only_ceiling < 0.8
    assert table["patient_id"].str.fullmatch(r"P\d{4}").all()  # pseudonymous ids
    assert set(DIAGNOSTIC_REGION.values()) == {"nodular", "diffuse"}


def test_ground_truth_masks_contain_both_regions(tiny_cohort):
    truth = load_truth(tiny_cohort)
    assert truth.labels["nodular"] == NODULAR and truth.labels["diffuse"] == DIFFUSE
    for slide_id in tiny_cohort.slides["slide_id"]:
        regions = truth.region_masks(slide_id)
        assert regions["nodular"].sum() > 100 and regions["diffuse"].sum() > 100, slide_id


def test_regions_are_visibly_different_phenotypes(tiny_cohort, tiny_cohort_dir):
    """Phenotype B (small crowded nuclei) is darker than phenotype A within the same region kind."""
    truth = load_truth(tiny_cohort)
    darkness = {"A": [], "B": []}
    for row in truth.regions.itertuples():
        slide = openslide.OpenSlide(str(tiny_cohort_dir / "slides" / f"{row.slide_id}.tiff"))
        level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB")).astype(float).mean(-1)
        darkness[row.nodular_phenotype].append(255 - level1[truth.region_masks(row.slide_id)["nodular"]].mean())
    assert np.mean(darkness["B"]) > np.mean(darkness["A"])


def test_generation_is_resumable_and_deterministic(tmp_path):
    from persam_lib.cohort.demo import make_demo_cohort

    config = DemoConfig(patients=4, seed=5, width=768, height=768, region_radius=120)
    make_demo_cohort(tmp_path / "a", config, progress=False)
    first = (tmp_path / "a" / "slides" / "S0002.tiff").read_bytes()
    (tmp_path / "a" / "slides" / "S0002.tiff").unlink()
    make_demo_cohort(tmp_path / "a", config, progress=False)  # rerun regenerates only the missing slide
    assert (tmp_path / "a" / "slides" / "S0002.tiff").read_bytes() == first
    assert not list((tmp_path / "a").rglob("*.tmp*"))


def test_pyramid_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_pyramidal_tiff(tmp_path / "x.tiff", np.zeros((64, 64, 3), dtype=np.float32), mpp=0.5)


def test_parallel_generation_gives_the_same_files_as_serial(tmp_path):
    from persam_lib.cohort.demo import make_demo_cohort

    config = DemoConfig(patients=4, seed=9, width=768, height=768, region_radius=120)
    make_demo_cohort(tmp_path / "serial", config, progress=False, workers=1)
    make_demo_cohort(tmp_path / "parallel", config, progress=False, workers=2)
    mask = mask_file("truth", "S0002")
    for name in ("slides/S0001.tiff", "slides/S0004.tiff", mask, f"truth/{REGIONS_FILE}", f"truth/{TRUTH_FILE}", "clinical.csv", "manifest.yaml"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes(), name
