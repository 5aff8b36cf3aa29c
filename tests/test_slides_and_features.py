import h5py
import numpy as np
import pytest
from PIL import Image

from persam_lib.cohort.truth import load_truth
from persam_lib.features.encoders import create_encoder
from persam_lib.features.config import ExtractConfig
from persam_lib.features.extract import extract, extract_slide
from persam_lib.features.store import SlideFeatures, is_complete, read_features, write_features
from persam_lib.slides.base import SlideError, downsample
from persam_lib.slides.factory import open_slide
from persam_lib.slides.memory import InMemorySlideReader
from persam_lib.slides.patching import PatchConfig, grid_coverage, mask_fraction


def test_coords_are_inside_the_slide_and_on_tissue(tiny_cohort, tiny_features, tiny_cohort_dir):
    for row in tiny_cohort.slides.itertuples():
        data = read_features(tiny_features / f"{row.slide_id}.h5")
        with open_slide(row.path) as slide:
            width, height = slide.level_dimensions[0]
        assert len(data.coords) > 5
        assert (data.coords >= 0).all()
        assert (data.coords[:, 0] + data.patch_size <= width).all() and (data.coords[:, 1] + data.patch_size <= height).all()
        truth = load_truth(tiny_cohort)
        tissue = truth.mask(row.slide_id) > 0
        on_tissue = mask_fraction(tissue, truth.mask_downsample, data.coords, data.patch_size)
        assert on_tissue.min() > 0.15 and np.mean(on_tissue >= 0.25) >= 0.9  # patches are kept from a quarter tissue
        assert grid_coverage(tissue, truth.mask_downsample, data.coords, data.patch_size).tissue_captured > 0.95


def test_h5_follows_clam_convention(tiny_features):
    with h5py.File(next(tiny_features.glob("*.h5")), "r") as f:
        assert f["features"].ndim == 2 and f["features"].dtype == np.float32
        assert f["coords"].shape == (f["features"].shape[0], 2)
        attrs = dict(f["coords"].attrs)
        assert attrs["patch_size"] == 256 and attrs["patch_level"] == 0 and attrs["downsample"] == 1.0
        assert attrs["mpp"] == pytest.approx(0.5)
        assert f.attrs["encoder"] == "stats"


def test_h5_round_trip_is_atomic(tmp_path):
    data = SlideFeatures("S1", np.random.rand(7, 5).astype(np.float32), np.arange(14).reshape(7, 2), patch_size=256, mpp=0.25, encoder="x")
    path = write_features(tmp_path / "S1.h5", data)
    back = read_features(path)
    np.testing.assert_array_equal(back.features, data.features)
    np.testing.assert_array_equal(back.coords, data.coords)
    assert (back.slide_id, back.patch_size, back.mpp, back.encoder) == ("S1", 256, 0.25, "x")
    assert [p.name for p in tmp_path.iterdir()] == ["S1.h5"]
    assert is_complete(path)


def test_truncated_h5_is_not_complete(tmp_path):
    data = SlideFeatures("S1", np.random.rand(50, 5).astype(np.float32), np.zeros((50, 2), dtype=np.int64), patch_size=256)
    path = write_features(tmp_path / "S1.h5", data)
    path.write_bytes(path.read_bytes()[:500])
    assert not is_complete(path)
    with pytest.raises(ValueError, match="not a readable HDF5 feature file"):
        read_features(path)


def test_extract_resumes_and_records_failures(tiny_cohort, tmp_path):
    out = tmp_path / "features"
    first = extract(tiny_cohort, out, progress=False)
    assert len(first.written) == 8
    (out / "S0003.h5").unlink()
    broken = tiny_cohort.slides.copy()
    broken.loc[broken.slide_id == "S0005", "path"] = str(tmp_path / "missing.tiff")
    tiny_cohort_broken = type(tiny_cohort)(**{**tiny_cohort.__dict__, "slides": broken})
    (out / "S0005.h5").unlink()
    second = extract(tiny_cohort_broken, out, progress=False)
    assert second.written == ["S0003"] and len(second.skipped) == 6
    assert list(second.failed) == ["S0005"] and "does not exist" in second.failed["S0005"]
    assert "1 failed" in second.line()
    assert "S0005" in (out / "failures.csv").read_text()


def test_patch_plan_picks_the_level_and_resizes():
    from persam_lib.slides.patching import plan_patches

    # a 40x slide (0.25 mpp) with levels 1, 4, 16: 20x patches are read at level 0 and halved
    plan = plan_patches(0.25, (1.0, 4.0, 16.0), PatchConfig(patch_size=256, mpp=0.5))
    assert (plan.level, plan.read_size, plan.patch_size_level0, plan.stride_level0) == (0, 512, 512, 512)
    # 5x patches (2.0 mpp) come from level 1 (downsample 4 = 1.0 mpp), read at 512 and halved
    plan = plan_patches(0.25, (1.0, 4.0, 16.0), PatchConfig(patch_size=256, mpp=2.0, stride=128))
    assert (plan.level, plan.read_size, plan.patch_size_level0, plan.stride_level0) == (1, 512, 2048, 1024)
    # native resolution
    assert plan_patches(0.5, (1.0, 4.0), PatchConfig(mpp=None)).read_size == 256
    with pytest.raises(ValueError, match="'mpp' parameter"):
        PatchConfig(mpp=100)


def test_extraction_at_a_coarser_target_resolution(tiny_cohort):
    reader = open_slide(tiny_cohort.slides["path"].iloc[0])
    data, _, _ = extract_slide(reader, "S", create_encoder("stats"), ExtractConfig(patch=PatchConfig(patch_size=128, mpp=1.0)))
    assert data.patch_size == 128 and data.patch_size_level0 == 256 and data.mpp == 1.0 and data.patch_level == 0
    size = np.array(reader.level_dimensions[0])
    assert ((data.coords % 256 == 0) | (data.coords + 256 == size)).all()  # on the 256-px grid, or flush with the right/bottom edge


def test_in_memory_reader_and_no_tissue_error():
    blank = InMemorySlideReader(np.full((1024, 1024, 3), 250, dtype=np.uint8))
    with pytest.raises(RuntimeError, match="no patch has at least"):
        extract_slide(blank, "blank", create_encoder("stats"), ExtractConfig())
    image = np.full((1024, 1024, 3), 250, dtype=np.uint8)
    image[100:900, 100:900] = (220, 140, 190)
    reader = InMemorySlideReader(image)
    np.testing.assert_array_equal(reader.read_region((100, 100), 0, (10, 10)), image[100:110, 100:110])
    data, mask, ds = extract_slide(reader, "pink", create_encoder("stats"), ExtractConfig())
    assert data.features.shape == (len(data.coords), 26) and np.isfinite(data.features).all()


def test_pyramid_levels_are_block_means_and_the_in_memory_reader_uses_them():
    image = np.random.default_rng(0).integers(0, 256, (67, 130, 3), dtype=np.uint8)
    reduced = downsample(image, 4)
    blocks = image[:64, :128].reshape(16, 4, 32, 4, 3).astype(float).mean(axis=(1, 3))
    assert reduced.shape == (16, 32, 3) and np.abs(reduced - blocks).max() <= 0.5 + 1e-9  # the mean, rounded
    thumb, ds = InMemorySlideReader(image, downsamples=(1, 4)).thumbnail(4)
    assert ds == 4.0
    np.testing.assert_array_equal(thumb, reduced)


def test_extract_command_reads_its_defaults_from_the_config_dataclasses(monkeypatch):
    """Defaults are declared once, on PatchConfig / ExtractConfig: changing one there changes the CLI."""
    from persam_lib.cli import build_parser

    changed = {(PatchConfig, "patch_size"): 224, (PatchConfig, "mpp"): 0.25, (PatchConfig, "stride"): 112, (PatchConfig, "min_tissue_fraction"): 0.3,
               (ExtractConfig, "batch_size"): 17, (ExtractConfig, "num_workers"): 3, (ExtractConfig, "encoder"): "resnet50_trunc", (ExtractConfig, "reader_backend"): "openslide"}
    for (cls, name), value in changed.items():
        monkeypatch.setattr(cls, name, value)
    args = build_parser().parse_args(["extract", "manifest.yaml", "--out", "features"])
    assert (args.patch_size, args.mpp, args.stride, args.min_tissue) == (224, 0.25, 112, 0.3)
    assert (args.batch_size, args.readers, args.encoder, args.reader_backend) == (17, 3, "resnet50_trunc", "openslide")


def test_openslide_reader_errors_name_the_file(tmp_path):
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "absent.svs")
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(png)
    with pytest.raises(SlideError, match="photo.png"):
        open_slide(png).level_dimensions


def test_encoder_registry_lists_names():
    with pytest.raises(ValueError, match="Available encoders: .*stats"):
        create_encoder("resnet9000")


def test_stats_encoder_separates_nuclear_size():
    rng = np.random.default_rng(0)

    def patch(radius, count):
        img = np.full((256, 256, 3), (235, 160, 200), dtype=np.uint8)
        yy, xx = np.mgrid[:256, :256]
        for _ in range(count):
            cy, cx = rng.integers(0, 256, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = (70, 40, 120)
        return img

    enc = create_encoder("stats")
    small = enc(np.stack([patch(3, 200) for _ in range(4)]))
    large = enc(np.stack([patch(7, 40) for _ in range(4)]))
    # the finest difference-of-Gaussians energy responds more to small nuclei, relative to nuclear area
    assert (small[:, 14] / small[:, 11]).mean() > (large[:, 14] / large[:, 11]).mean()


def test_fast_tiled_tiff_path_returns_the_same_pixels_as_openslide(tiny_cohort):
    from persam_lib.slides.openslide_reader import OpenSlideReader
    from persam_lib.slides.tiled_tiff import TiledTiffReader

    path = tiny_cohort.slides["path"].iloc[0]
    assert isinstance(open_slide(path), TiledTiffReader)
    assert isinstance(open_slide(path, backend="openslide"), OpenSlideReader)
    slow, fast = OpenSlideReader(path), TiledTiffReader(path)
    assert fast.level_dimensions == slow.level_dimensions and fast.mpp == slow.mpp
    rng = np.random.default_rng(0)
    for level, ds in enumerate(slow.level_downsamples):
        ds = int(ds)
        for _ in range(15):  # regions at pixel-aligned positions of the level, some past the edges
            x, y = (rng.integers(-20, slow.level_dimensions[level][0] + 20, 2) * ds).tolist()
            w, h = rng.integers(1, 300, 2).tolist()
            np.testing.assert_array_equal(fast.read_region((x, y), level, (w, h)), slow.read_region((x, y), level, (w, h)))
    np.testing.assert_array_equal(fast.thumbnail(16)[0], slow.thumbnail(16)[0])


def test_a_corrupt_tile_fails_only_its_slide(tiny_cohort, tmp_path):
    import shutil

    import tifffile

    from persam_lib.features.config import ExtractConfig

    broken = tmp_path / "broken.tiff"
    shutil.copy(tiny_cohort.slides["path"].iloc[0], broken)
    with tifffile.TiffFile(broken) as tif:
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        middle = (page.imagelength // page.tilelength // 2) * across + across // 2  # a tile in the tissue
        offset, count = page.dataoffsets[middle], page.databytecounts[middle]
    with open(broken, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff\xd8\xff\x00garbage" * (count // 11))
    slides = tiny_cohort.slides.head(3).copy()
    slides.loc[slides.index[1], "path"] = str(broken)
    cohort = type(tiny_cohort)(**{**tiny_cohort.__dict__, "slides": slides})
    summary = extract(cohort, tmp_path / "features", ExtractConfig(num_workers=1, batch_size=16), progress=False)
    assert sorted(summary.written) == sorted([slides.slide_id.iloc[0], slides.slide_id.iloc[2]])
    failed_id = slides.slide_id.iloc[1]
    assert list(summary.failed) == [failed_id] and "broken.tiff" in summary.failed[failed_id]
    assert not (tmp_path / "features" / f"{failed_id}.h5").exists()


def test_dask_local_cluster_gives_the_same_features_and_resumes(tiny_cohort, tiny_features, tmp_path):
    from persam_lib.features.distributed import extract_distributed

    slides = tiny_cohort.slides.head(4).copy()
    slides.loc[slides.index[3], "path"] = str(tmp_path / "gone.tiff")
    cohort = type(tiny_cohort)(**{**tiny_cohort.__dict__, "slides": slides})
    out = tmp_path / "features"
    summary = extract_distributed(cohort, out, n_workers=2, progress=False)
    assert sorted(summary.written) == list(slides.slide_id[:3]) and list(summary.failed) == [slides.slide_id.iloc[3]]
    for slide_id in summary.written:
        ours, reference = read_features(out / f"{slide_id}.h5"), read_features(tiny_features / f"{slide_id}.h5")
        np.testing.assert_allclose(ours.features, reference.features, rtol=1e-6)
        np.testing.assert_array_equal(ours.coords, reference.coords)
    again = extract_distributed(cohort, out, n_workers=2, progress=False)
    assert sorted(again.skipped) == list(slides.slide_id[:3]) and again.written == []
