"""Features are used only when they match: every file records its extraction settings, a rerun with
other settings is refused unless --overwrite, and one check proves a folder usable before training."""
import hashlib
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
import pytest

from persam_lib.cli import main
from persam_lib.features.consistency import FeatureMismatchError, check_feature_folder
from persam_lib.features.config import ExtractConfig
from persam_lib.features.extract import extract
from persam_lib.features.importing import import_features
from persam_lib.features.settings import extraction_settings, setting_differences
from persam_lib.features.store import FeatureFileError, SlideFeatures, read_extraction, read_features, write_features
from persam_lib.slides.patching import PatchConfig

PERSAM = str(Path(sys.executable).parent / "persam")


def _copy(tiny_features, tmp_path) -> Path:
    out = tmp_path / "features"
    shutil.copytree(tiny_features, out)
    return out


def _set_record(path: Path, **changes) -> None:
    """Change settings in one file's record (as if it had been made differently)."""
    with h5py.File(path, "a") as f:
        record = json.loads(f.attrs["extraction"])
        record.update(changes)
        f.attrs["extraction"] = json.dumps(record)


def test_every_file_records_its_settings_beside_the_clam_attributes(tiny_features):
    path = tiny_features / "S0001.h5"
    record = read_extraction(path)
    assert record == {
        "source": "persam", "encoder": "stats", "encoder_weights_sha256": "none", "patch_size": 256, "mpp": 0.5, "stride": 256,
        "min_tissue_fraction": 0.25, "tissue": record["tissue"], "library_version": version("persam-lib"),
    }
    assert record["tissue"]["thumbnail_downsample"] == 16.0 and record["tissue"]["min_area_um2"] == 5000.0 and record["tissue"]["reject_pen"] is True
    with h5py.File(path, "r") as f:  # CLAM / TRIDENT attributes are intact
        assert f.attrs["encoder"] == "stats" and f["coords"].attrs["patch_size"] == 256 and f["coords"].attrs["patch_size_level0"] == 256
    config = json.loads((tiny_features / "extract_config.json").read_text())
    assert config["patch"]["mpp"] == 0.5 and config["extraction"] == record


def test_weights_are_recorded_by_their_sha256(tmp_path):
    weights = tmp_path / "resnet.pth"
    weights.write_bytes(b"not really a state dict, but bytes to hash" * 1000)
    record = extraction_settings(ExtractConfig(encoder="resnet50_trunc", encoder_weights=str(weights)))
    assert record["encoder_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    differences = setting_differences(record, extraction_settings(ExtractConfig(encoder="resnet50_trunc", encoder_weights=str(other))))
    assert [name for name, _, _ in differences] == ["encoder_weights_sha256"]
    with pytest.raises(FileNotFoundError, match="weight file .*missing.pth does not exist"):
        extraction_settings(ExtractConfig(encoder="resnet50_trunc", encoder_weights=str(tmp_path / "missing.pth")))


def test_a_rerun_with_another_mpp_is_refused_and_nothing_is_mixed_in(tiny_cohort, tiny_features, tmp_path):
    out = _copy(tiny_features, tmp_path)
    (out / "S0003.h5").unlink()
    config_before = (out / "extract_config.json").read_text()
    result = subprocess.run([PERSAM, "extract", str(tiny_cohort.manifest_path), "--out", str(out), "--mpp", "2", "--readers", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("persam extract: error: ")
    assert "mpp is 0.5 in S0001.h5 but 2.0 in this run (--mpp)" in message and "--overwrite" in message
    assert not (out / "S0003.h5").exists()  # nothing written at 2.0 µm beside the 0.5 µm files
    assert (out / "extract_config.json").read_text() == config_before


def test_overwrite_redoes_every_slide_with_the_new_settings(tiny_cohort, tiny_features, tmp_path, capsys):
    out = _copy(tiny_features, tmp_path)
    code = main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--mpp", "2", "--patch-size", "64", "--readers", "0", "--overwrite"])
    assert code == 0 and "8 written, 0 already done, 0 failed" in capsys.readouterr().out
    info = check_feature_folder(out, tiny_cohort.slides["slide_id"])
    assert info.settings["mpp"] == 2.0 and info.settings["patch_size"] == 64
    assert all(read_features(p).mpp == 2.0 for p in out.glob("S*.h5"))
    assert json.loads((out / "extract_config.json").read_text())["extraction"]["mpp"] == 2.0


def test_another_library_version_is_a_different_setting(tiny_cohort, tiny_features, tmp_path, capsys):
    out = _copy(tiny_features, tmp_path)
    for path in out.glob("S*.h5"):
        _set_record(path, library_version="0.0.1")
    code = main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and f"library_version is '0.0.1' in S0001.h5 but '{version('persam-lib')}' in this run" in err
    assert check_feature_folder(out, ["S0001", "S0002"]).settings["library_version"] == "0.0.1"  # one version throughout: usable


def test_the_folder_check_hands_back_every_slide_read_once(tiny_cohort, tiny_features):
    ids = list(tiny_cohort.slides["slide_id"])
    info = check_feature_folder(tiny_features, reversed(ids))
    assert list(info.features) == ids[::-1] and info.dim == 26 and info.settings == read_extraction(tiny_features / "S0001.h5")
    np.testing.assert_array_equal(info.features["S0004"].features, read_features(tiny_features / "S0004.h5").features)
    with pytest.raises(FileNotFoundError, match="no features for slide 'S9999'. Run `persam extract` first"):
        check_feature_folder(tiny_features, ["S0001", "S9999"])


def test_a_nan_names_the_slide_and_row(tiny_features, tmp_path):
    out = _copy(tiny_features, tmp_path)
    with h5py.File(out / "S0002.h5", "a") as f:
        f["features"][5, 3] = np.nan
        f["features"][9, 0] = np.inf
        x, y = f["coords"][5]
    with pytest.raises(FeatureMismatchError) as caught:
        check_feature_folder(out, ["S0001", "S0002", "S0003"])
    message = str(caught.value)
    assert "S0002.h5: slide 'S0002' has a non-finite feature value (nan) in row 5" in message
    assert f"(patch at level-0 x={x}, y={y}), column 3 (2 rows in all)" in message and "run `persam extract` again" in message
    with pytest.raises(FeatureFileError, match="in row 5"):  # any reader of the file is told the same
        read_features(out / "S0002.h5")
    assert isinstance(caught.value, ValueError)  # the CLI's exit 2


def test_files_that_disagree_are_named_with_the_setting(tiny_features, tmp_path):
    out = _copy(tiny_features, tmp_path)
    _set_record(out / "S0004.h5", mpp=2.0, stride=128)
    with pytest.raises(FeatureMismatchError, match=r"S0001.h5, 2.0 in S0004.h5 \(--mpp\); stride: 256 in S0001.h5, 128 in S0004.h5 \(--stride\)"):
        check_feature_folder(out, ["S0001", "S0002", "S0004"])
    assert check_feature_folder(out, ["S0001", "S0002"]).dim == 26  # only the slides asked for are read

    odd = read_features(out / "S0005.h5")
    write_features(out / "S0005.h5", SlideFeatures("S0005", np.zeros((3, 8), np.float32), odd.coords[:3], 256, extraction=odd.extraction))
    with pytest.raises(FeatureMismatchError, match="disagree in feature dimension: S0001.h5 has 26, S0005.h5 has 8"):
        check_feature_folder(out, ["S0001", "S0005"])


def test_a_file_without_a_record_is_not_taken_for_a_match(tiny_cohort, tiny_features, tmp_path, capsys):
    out = _copy(tiny_features, tmp_path)
    with h5py.File(out / "S0006.h5", "a") as f:
        del f.attrs["extraction"]  # as an older persam wrote it
    with pytest.raises(FeatureMismatchError, match="S0006.h5 was written without a record of its extraction settings .*S0001.h5 with one"):
        check_feature_folder(out, ["S0001", "S0006"])
    assert check_feature_folder(out, ["S0006"]).settings["source"] == "unrecorded"

    (out / "S0001.h5").unlink()
    assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"]) == 2  # finishing it would mix them
    assert "S0006.h5 was written without a record of its extraction settings" in capsys.readouterr().err
    assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0", "--overwrite"]) == 0
    assert check_feature_folder(out, tiny_cohort.slides["slide_id"]).settings["source"] == "persam"


def test_imported_features_get_a_record_and_pass_when_consistent(tiny_cohort, tmp_path):
    ids = list(tiny_cohort.slides["slide_id"])
    clam = tmp_path / "clam" / "h5_files"
    clam.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, sid in enumerate(ids):
        with h5py.File(clam / f"{sid}.h5", "w") as f:
            f.create_dataset("features", data=rng.random((4, 32)).astype(np.float32))
            coords = f.create_dataset("coords", data=np.arange(8).reshape(4, 2) * 512)
            coords.attrs["patch_size"] = 512 if i == 5 else 256  # one slide was patched differently
            coords.attrs["patch_level"] = 0
    summary = import_features(tiny_cohort, tmp_path / "clam", tmp_path / "out", "clam")
    assert list(summary.failed) == [ids[5]] and "patch_size: 256 in" in summary.failed[ids[5]] and "512 in" in summary.failed[ids[5]]
    good = [s for s in ids if s != ids[5]]
    info = check_feature_folder(tmp_path / "out", good)
    assert info.settings == {"source": "clam", "encoder": "clam:clam", "patch_size": 256, "mpp": None, "library_version": version("persam-lib")}


def test_an_encoder_that_gives_nan_fails_its_slide_and_writes_nothing(tiny_cohort, tmp_path, monkeypatch):
    import persam_lib.features.extract as extract_module
    from persam_lib.features.encoders import StatsEncoder

    class Broken(StatsEncoder):
        calls = 0

        def __call__(self, patches):
            out = super().__call__(patches)
            Broken.calls += 1
            if Broken.calls == 1:
                out[0, 0] = np.nan
            return out

    monkeypatch.setattr(extract_module, "create_encoder", lambda name, weights=None: Broken())
    cohort = type(tiny_cohort)(**{**tiny_cohort.__dict__, "slides": tiny_cohort.slides.head(2)})
    summary = extract(cohort, tmp_path / "f", ExtractConfig(num_workers=0, batch_size=512, patch=PatchConfig(mpp=1.0)), progress=False)
    assert summary.written == ["S0002"] and "encoder 'stats' gave non-finite features for 1 of" in summary.failed["S0001"]
    assert not (tmp_path / "f" / "S0001.h5").exists()


def test_train_names_the_file_with_a_nan_before_any_fold_trains(tiny_cohort, tiny_features, tmp_path, capsys):
    out = _copy(tiny_features, tmp_path)
    with h5py.File(out / "S0007.h5", "a") as f:
        f["features"][2, 1] = np.nan
    code = main(["train", str(tiny_cohort.manifest_path), "--features", str(out), "--out", str(tmp_path / "run"), "--folds", "2", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "S0007.h5: slide 'S0007' has a non-finite feature value (nan) in row 2" in err
    assert "Input contains NaN" not in err
