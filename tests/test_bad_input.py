"""Bad slides fail alone, with a message naming the file and what to do; a killed run resumes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from persam_lib.cli import main
from persam_lib.features.store import is_complete, read_features


def _add_slides(cohort_dir, extra: dict[str, str], mpp: dict[str, str] | None = None):
    """Point some slide rows of a copied cohort at other files (and optionally set an mpp column)."""
    table = pd.read_csv(cohort_dir / "slides.csv", dtype=str)
    for slide_id, path in extra.items():
        table.loc[table.slide_id == slide_id, "path"] = path
    if mpp is not None:
        table["mpp"] = [mpp.get(s, "") for s in table.slide_id]
    table.to_csv(cohort_dir / "slides.csv", index=False)


def _extract(cohort_dir, out, capsys):
    code = main(["extract", str(cohort_dir / "manifest.yaml"), "--out", str(out), "--readers", "0"])
    return code, capsys.readouterr().out, pd.read_csv(out / "failures.csv").set_index("slide_id")["reason"].to_dict()


def test_bad_slides_are_recorded_and_the_others_go_on(cohort_copy, tmp_path, capsys):
    bad = cohort_copy / "bad"
    bad.mkdir()
    good = (cohort_copy / "slides" / "S0001.tiff").resolve()
    data = good.read_bytes()
    (bad / "truncated.tiff").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(bad / "photo.png")
    blank = np.full((1024, 1024, 3), 248, dtype=np.uint8)
    tifffile.imwrite(bad / "blank.tiff", blank, tile=(256, 256), compression="jpeg", photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    _add_slides(cohort_copy, {"S0002": "bad/truncated.tiff", "S0003": "bad/photo.png", "S0004": "bad/blank.tiff"})
    code, out, failures = _extract(cohort_copy, tmp_path / "features", capsys)
    assert code == 1 and "5 written, 0 already done, 3 failed (S0002, S0003, S0004" in out
    assert "truncated.tiff" in failures["S0002"]
    assert "photo.png" in failures["S0003"] and "OpenSlide" in failures["S0003"]
    assert "blank.tiff" in failures["S0004"] and "no patch has at least 25% tissue" in failures["S0004"]
    assert sorted(p.stem for p in (tmp_path / "features").glob("*.h5")) == ["S0001", "S0005", "S0006", "S0007", "S0008"]


def test_missing_mpp_is_an_error_unless_the_manifest_gives_it(cohort_copy, tmp_path, capsys):
    import openslide

    source = openslide.OpenSlide(str(cohort_copy / "slides" / "S0001.tiff"))
    level0 = np.asarray(source.read_region((0, 0), 0, source.level_dimensions[0]).convert("RGB"))
    with tifffile.TiffWriter(cohort_copy / "nompp.tiff") as tif:  # a pyramid without resolution tags
        tif.write(level0, tile=(256, 256), compression="jpeg", photometric="rgb")
        tif.write(level0[::4, ::4].copy(), tile=(256, 256), compression="jpeg", photometric="rgb", subfiletype=1)
    _add_slides(cohort_copy, {"S0001": "nompp.tiff"})
    code, _, failures = _extract(cohort_copy, tmp_path / "f1", capsys)
    assert code == 1 and "no microns-per-pixel metadata" in failures["S0001"] and "mpp" in failures["S0001"]
    _add_slides(cohort_copy, {}, mpp={"S0001": "0.5"})
    code, _, failures = _extract(cohort_copy, tmp_path / "f1", capsys)
    assert code == 0 and failures == {}
    assert read_features(tmp_path / "f1" / "S0001.h5").mpp == 0.5


def test_a_killed_extraction_resumes_and_every_file_is_readable(tiny_cohort, tmp_path):
    out = tmp_path / "features"
    command = [str(Path(sys.executable).parent / "persam"), "extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "1", "--batch-size", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("S*.h5"))) < 2:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI and its reader workers, mid-run
    process.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("S*.h5")}
    assert 2 <= len(done_before) < 8, "the kill should land mid-run"
    assert all(is_complete(p) for p in out.glob("S*.h5"))  # no half-written file under a final name
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"extract: {8 - len(done_before)} written, {len(done_before)} already done, 0 failed" in rerun.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in done_before} == done_before  # finished slides were not redone
    files = sorted(out.glob("S*.h5"))
    assert len(files) == 8 and all(len(read_features(p).features) > 0 for p in files)
    assert not list(out.glob(".*.tmp"))
