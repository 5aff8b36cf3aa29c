"""`persam validate` opens every slide as extraction will and lists every unreadable one in one message."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from PIL import Image

from persam_lib.cli import main
from persam_lib.cohort.manifest import load_manifest, unreadable_report
from persam_lib.slides import check
from persam_lib.slides.check import check_slide, check_slides

PERSAM = Path(sys.executable).with_name("persam")


def _level0(path) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.level_dimensions[0]).convert("RGB"))


@pytest.fixture(scope="module")
def bad_slides(tiny_cohort_dir, tmp_path_factory) -> dict[str, Path]:
    """One file per way a slide goes wrong, made from a real slide of the tiny cohort."""
    out = tmp_path_factory.mktemp("bad_slides")
    good = tiny_cohort_dir / "slides" / "S0001.tiff"
    data = good.read_bytes()
    files = {"truncated": out / "truncated.tiff", "png": out / "photo.svs", "lzma": out / "lzma.tiff", "corrupt": out / "corrupt.tiff", "nompp": out / "nompp.tiff", "empty": out / "empty.svs"}
    files["truncated"].write_bytes(data[: len(data) // 3])
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(files["png"], format="PNG")  # a PNG under a slide's name
    files["empty"].write_bytes(b"")
    level0 = _level0(good)
    tifffile.imwrite(files["lzma"], level0, tile=(256, 256), compression="lzma", photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(files["nompp"]) as tif:  # a pyramid without resolution tags
        tif.write(level0, tile=(256, 256), compression="jpeg", photometric="rgb")
        tif.write(level0[::4, ::4].copy(), tile=(256, 256), compression="jpeg", photometric="rgb", subfiletype=1)
    corrupt = bytearray(data)
    with tifffile.TiffFile(good) as tif:  # zero the stored JPEG tile under the centre of level 0
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        index = (page.imagelength // 2 // page.tilelength) * across + page.imagewidth // 2 // page.tilewidth
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    corrupt[offset : offset + count] = bytes(count)
    files["corrupt"].write_bytes(bytes(corrupt))
    return files


def test_a_good_slide_passes_with_either_backend(tiny_cohort_dir):
    good = tiny_cohort_dir / "slides" / "S0001.tiff"
    assert check_slide(good) is None and check_slide(good, backend="openslide") is None and check_slide(good, mpp=0.25) is None


@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_each_bad_slide_says_what_is_wrong_and_what_to_do(bad_slides, backend):
    reasons = {name: check_slide(path, backend=backend) for name, path in bad_slides.items()}
    assert all(reason and reason.startswith(str(bad_slides[name])) for name, reason in reasons.items()), reasons
    assert "the file is truncated: its TIFF structure refers to byte" in reasons["truncated"] and "Copy it again from the source" in reasons["truncated"]
    assert "the file is a PNG image, not a whole-slide image" in reasons["png"] and "vips tiffsave" in reasons["png"]
    assert "the TIFF uses LZMA compression, which OpenSlide cannot decode (Unsupported TIFF compression: 34925)" in reasons["lzma"] and "--compression jpeg" in reasons["lzma"]
    assert "level 0 (1536 x 1152) could not be decoded at its centre (Not a JPEG file" in reasons["corrupt"] and "corrupt or incomplete" in reasons["corrupt"]
    assert "no microns-per-pixel metadata" in reasons["nompp"] and "`mpp` column" in reasons["nompp"]
    assert "the file is empty (0 bytes)" in reasons["empty"]


def test_an_mpp_from_the_table_rescues_a_slide_without_metadata(bad_slides):
    assert check_slide(bad_slides["nompp"], mpp=0.5) is None


class _FakeReader:
    """A slide whose geometry or resolution is implausible; its pixels are fine."""

    def __init__(self, dims, downsamples, mpp):
        self.path, self.level_dimensions, self.level_downsamples, self.mpp = "fake.svs", dims, downsamples, mpp

    def read_region(self, xy, level, size):
        return np.full((size[1], size[0], 3), 200, np.uint8)

    def close(self):
        pass


@pytest.mark.parametrize(
    "dims, downsamples, mpp, expected",
    [
        (((200_000, 150_000), (50_000, 37_500)), (1.0, 4.0), 20.0, "the slide would be 4000 x 3000 mm, larger than any glass slide"),
        (((0, 1000),), (1.0,), 0.5, "level 0 is 0 x 1000 pixels, which is not a plausible slide level"),
        (((1000, 1000), (4000, 4000)), (1.0, 0.25), 0.5, "level 1 (4000 x 4000, downsample 0.25) is larger than level 0"),
        ((), (), 0.5, "the slide reports no pyramid levels"),
    ],
)
def test_implausible_geometry_or_resolution_is_named(monkeypatch, dims, downsamples, mpp, expected):
    monkeypatch.setattr(check, "open_slide", lambda path, mpp=None, backend="auto", _mpp=mpp: _FakeReader(dims, downsamples, _mpp))
    reason = check_slide("fake.svs")
    assert reason is not None and reason.startswith("fake.svs: ") and expected in reason


def _point(cohort_dir, paths: dict[str, Path]):
    table = pd.read_csv(cohort_dir / "slides.csv", dtype=str)
    for slide_id, path in paths.items():
        table.loc[table.slide_id == slide_id, "path"] = str(path)
    table.to_csv(cohort_dir / "slides.csv", index=False)


def test_validate_lists_every_unreadable_slide_in_one_message(cohort_copy, bad_slides, capsys):
    _point(cohort_copy, {"S0002": bad_slides["truncated"], "S0004": bad_slides["png"], "S0007": bad_slides["lzma"]})
    cohort = load_manifest(cohort_copy / "manifest.yaml")  # the tables are valid: the files are the problem
    found = check_slides(cohort)
    assert [(p.slide_id, p.patient_id) for p in found] == [("S0002", "P0002"), ("S0004", "P0004"), ("S0007", "P0007")]
    assert main(["validate", str(cohort_copy / "manifest.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"persam validate: error: {cohort_copy / 'manifest.yaml'}: 3 slide(s) could not be read:\n" in err
    assert f"  - slide 'S0002' (patient 'P0002'): {bad_slides['truncated']}: the file is truncated" in err
    assert f"  - slide 'S0004' (patient 'P0004'): {bad_slides['png']}: the file is a PNG image" in err
    assert f"  - slide 'S0007' (patient 'P0007'): {bad_slides['lzma']}: the TIFF uses LZMA compression" in err
    assert "Fix those files, or remove their rows from the slide table." in err
    assert "S0001" not in err and "S0008" not in err and "Traceback" not in err
    assert main(["validate", "--quick", str(cohort_copy / "manifest.yaml")]) == 0  # --quick does not open slides
    assert "files not opened (--quick)" in capsys.readouterr().out


def test_cohort_errors_and_unreadable_slides_come_in_one_message(cohort_copy, bad_slides, capsys):
    table = pd.read_csv(cohort_copy / "clinical.csv", dtype=str, keep_default_na=False)
    table["subtype"] = "A"
    table.to_csv(cohort_copy / "clinical.csv", index=False)
    _point(cohort_copy, {"S0005": bad_slides["corrupt"]})
    assert main(["validate", str(cohort_copy / "manifest.yaml")]) == 2
    err = capsys.readouterr().err
    assert "only class 'A' is present" in err and "1 slide(s) could not be read:\n  - slide 'S0005' (patient 'P0005')" in err


def test_the_report_format_is_shared(tiny_cohort):
    text = unreadable_report(tiny_cohort, {"S0003": "/x/S0003.tiff: broken. Re-copy it."})
    assert text == f"{tiny_cohort.manifest_path}: 1 slide(s) could not be read:\n  - slide 'S0003' (patient 'P0003'): /x/S0003.tiff: broken. Re-copy it.\nFix those files, or remove their rows from the slide table."


def test_the_installed_validate_passes_a_good_cohort_after_opening_every_slide(tiny_cohort_dir):
    result = subprocess.run([str(PERSAM), "validate", str(tiny_cohort_dir / "manifest.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "valid — cohort 'demo', 8 slide(s), 8 patient(s)" in result.stdout and "every slide opened" in result.stdout
    assert "error" not in result.stderr
