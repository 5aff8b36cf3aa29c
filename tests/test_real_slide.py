"""A real H&E slide (OpenSlide's CMU-1 small region, CC0) through validate and extract."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py

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
