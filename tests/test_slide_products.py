"""A slide's products (tissue mask, then feature file) are complete together or not at all; a rerun
re-creates whatever is missing, and failures.csv keeps a failure until its slide succeeds."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from persam_lib.cli import main
from persam_lib.features.config import ExtractConfig
from persam_lib.features.extract import extract
from persam_lib.features.products import load_tissue_mask, mask_path, read_failures, save_mask, slide_done, write_failures
from persam_lib.features.settings import extraction_settings
from persam_lib.features.store import is_complete, read_extraction

PERSAM = str(Path(sys.executable).parent / "persam")
FAST = ExtractConfig(num_workers=0)


def _failures(out) -> dict[str, str]:
    return pd.read_csv(out / "failures.csv").set_index("slide_id")["reason"].to_dict()


def _extract(manifest, out, *extra) -> int:
    return main(["extract", str(manifest), "--out", str(out), "--readers", "0", *extra])


def test_a_slide_whose_mask_cannot_be_written_gets_no_feature_file_and_is_redone(tiny_cohort, tmp_path, monkeypatch, capsys):
    import persam_lib.features.products as products

    real = products.save_mask

    def refuse_s0002(path, mask, downsample):
        if Path(path).stem == "S0002":
            raise ValueError("PNG encoder failed")
        return real(path, mask, downsample)

    monkeypatch.setattr(products, "save_mask", refuse_s0002)
    out = tmp_path / "features"
    assert _extract(tiny_cohort.manifest_path, out) == 1
    assert "7 written, 0 already done, 1 failed (S0002" in capsys.readouterr().out
    assert not (out / "S0002.h5").exists() and not mask_path(out, "S0002").exists()  # mask first, features last
    assert "PNG encoder failed" in _failures(out)["S0002"]
    monkeypatch.undo()
    assert _extract(tiny_cohort.manifest_path, out) == 0
    assert "1 written, 7 already done, 0 failed" in capsys.readouterr().out
    assert slide_done(out, "S0002") and _failures(out) == {}


def test_a_missing_mask_makes_the_slide_redone(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(tiny_features, out)
    mask_path(out, "S0005").unlink()
    assert is_complete(out / "S0005.h5") and not slide_done(out, "S0005")
    result = subprocess.run([PERSAM, "extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 written, 7 already done, 0 failed" in result.stdout
    mask, downsample = load_tissue_mask(out, "S0005")
    reference, reference_ds = load_tissue_mask(tiny_features, "S0005")
    np.testing.assert_array_equal(mask, reference)
    assert downsample == reference_ds and all(slide_done(out, s) for s in tiny_cohort.slides["slide_id"])


def test_failures_are_kept_until_the_slide_succeeds(tiny_cohort, tmp_path):
    def cohort_of(slides):
        return type(tiny_cohort)(**{**tiny_cohort.__dict__, "slides": slides})

    out = tmp_path / "features"
    broken = tiny_cohort.slides.copy()
    broken.loc[broken.slide_id == "S0004", "path"] = str(tmp_path / "gone.tiff")
    assert list(extract(cohort_of(broken), out, FAST, progress=False).failed) == ["S0004"]
    assert "gone.tiff" in _failures(out)["S0004"]

    again = extract(cohort_of(broken[broken.slide_id != "S0004"]), out, FAST, progress=False)  # a run that leaves S0004 out
    assert len(again.skipped) == 7 and not again.failed
    assert "gone.tiff" in _failures(out)["S0004"]  # not forgotten by a run that did not redo it

    broken.loc[broken.slide_id == "S0004", "path"] = str(tmp_path / "moved.tiff")
    extract(cohort_of(broken), out, FAST, progress=False)
    assert "moved.tiff" in _failures(out)["S0004"] and "gone.tiff" not in _failures(out)["S0004"]  # the newest reason

    fixed = extract(tiny_cohort, out, FAST, progress=False)
    assert fixed.written == ["S0004"] and len(fixed.skipped) == 7
    assert _failures(out) == {}


def test_failures_merge_keeps_others_and_replaces_reasons(tmp_path):
    write_failures(tmp_path, {"A": "old reason", "B": "b failed", "C": "c failed"}, [])
    write_failures(tmp_path, {"A": "new reason"}, ["B"])
    assert read_failures(tmp_path) == {"A": "new reason", "C": "c failed"}
    (tmp_path / "failures.csv").write_text("not,a\nfailures\"table")
    write_failures(tmp_path, {"D": "d"}, [])  # an unreadable old file is replaced, not a crash
    assert read_failures(tmp_path) == {"D": "d"}


def test_mask_round_trip_is_atomic(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:10, 7:20] = True
    (tmp_path / "masks").mkdir()
    path = save_mask(tmp_path / "masks" / "S1.png", mask, 8.0)
    assert [p.name for p in path.parent.iterdir()] == ["S1.png"]
    back, downsample = load_tissue_mask(tmp_path, "S1")
    np.testing.assert_array_equal(back, mask)
    assert downsample == 8.0


def test_dask_path_redoes_a_slide_missing_its_mask(tiny_cohort, tiny_features, tmp_path):
    from persam_lib.features.distributed import extract_distributed

    cohort = type(tiny_cohort)(**{**tiny_cohort.__dict__, "slides": tiny_cohort.slides.head(3)})
    out = tmp_path / "features"
    shutil.copytree(tiny_features, out)
    mask_path(out, "S0002").unlink()
    (out / "S0003.h5").unlink()
    summary = extract_distributed(cohort, out, n_workers=1, progress=False)
    assert sorted(summary.written) == ["S0002", "S0003"] and summary.skipped == ["S0001"]
    assert all(slide_done(out, s) for s in ["S0001", "S0002", "S0003"])
    assert _failures(out) == {}
    assert read_extraction(out / "S0003.h5") == extraction_settings(ExtractConfig())  # the Dask path records its settings too
