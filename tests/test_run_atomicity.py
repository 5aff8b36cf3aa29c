"""A run folder is never half-valid: bad input writes nothing, a failed fold is redone (and only it),
every JSON file is strict, and unsafe YAML or an absent GPU is one clear line (exit 2)."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from persam_lib.cli import main
from persam_lib.train import run as run_module
from persam_lib.train.loop import TrainConfig
from persam_lib.train.run import Run, comparison_table, train_cross_validated

PERSAM = Path(sys.executable).parent / "persam"
TINY = TrainConfig.of(model="persam", n_folds=2, epochs=1, patience=1, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1)
TINY_FLAGS = ["--folds", "2", "--epochs", "1", "--set", "patience=1", "--set", "val_fraction=0.25", "--set", "d_model=16", "--set", "n_heads=2", "--set", "n_layers=1"]


def _strict(text: str):
    """json.loads that refuses NaN/Infinity (what any standard JSON reader does)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _train_args(cohort, features, out, *extra):
    return ["train", str(cohort.manifest_path), "--features", str(features), "--out", str(out), *TINY_FLAGS, *extra]


def _poison(path: Path, row: int) -> None:
    with h5py.File(path, "r+") as f:
        f["features"][row, 0] = np.nan


def test_a_nan_feature_writes_nothing_and_the_fixed_rerun_trains(tiny_cohort, tiny_features, tmp_path, capsys):
    features = tmp_path / "features"
    shutil.copytree(tiny_features, features)
    _poison(features / "S0003.h5", row=5)
    out = tmp_path / "run"
    assert main(_train_args(tiny_cohort, features, out)) == 2
    err = capsys.readouterr().err
    assert "persam train: error:" in err and "S0003" in err and "row 5" in err and "Traceback" not in err
    assert not out.exists()  # no run folder, no fold folder: nothing a rerun could mistake for finished
    shutil.copy2(tiny_features / "S0003.h5", features / "S0003.h5")  # the user fixes the file
    assert main(_train_args(tiny_cohort, features, out)) == 0
    run = Run(out)
    assert run.finished_folds == [0, 1]
    probs = run.predictions[["prob_A", "prob_B"]].to_numpy()
    assert len(probs) == 8 and np.isfinite(probs).all()


def test_a_failed_fold_leaves_no_marker_and_a_rerun_redoes_only_that_fold(tiny_cohort, tiny_features, tmp_path, monkeypatch):
    real_fit = run_module.fit
    calls = []

    def fit_failing_on_fold_1(*args, **kwargs):
        calls.append(kwargs["resume_path"].parent.name)
        if kwargs["resume_path"].parent.name == "fold_1":
            raise RuntimeError("killed mid-fold")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(run_module, "fit", fit_failing_on_fold_1)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed mid-fold"):
        train_cross_validated(tiny_cohort, tiny_features, out, TINY, progress=False)
    assert (out / "fold_0" / "done.json").is_file()
    assert not (out / "fold_1" / "done.json").exists() and not (out / "fold_1" / "predictions.csv").exists()
    assert not (out / "metrics.json").exists() and not (out / "predictions.csv").exists()  # the run is visibly unfinished
    with pytest.raises(FileNotFoundError, match="has not finished"):
        Run(out).metrics
    stamp = (out / "fold_0" / "checkpoint.pt").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(run_module, "fit", lambda *a, **k: (calls.append(k["resume_path"].parent.name), real_fit(*a, **k))[1])
    run = train_cross_validated(tiny_cohort, tiny_features, out, TINY, progress=False)
    assert calls == ["fold_1"]  # only the unfinished fold trained again
    assert (out / "fold_0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert run.finished_folds == [0, 1] and len(run.predictions) == 8
    assert _strict((out / "metrics.json").read_text())["model"] == "persam"


def test_non_finite_held_out_probabilities_name_the_fold_and_write_nothing_for_it(tiny_cohort, tiny_features, tmp_path, monkeypatch):
    real_evaluate = run_module.evaluate

    def diverged(model, bags, *args, **kwargs):
        probs = real_evaluate(model, bags, *args, **kwargs)
        probs[0] = np.nan
        return probs

    monkeypatch.setattr(run_module, "evaluate", diverged)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"fold 0: the trained persam gave non-finite probabilities \(NaN or Inf\) for 1 held-out slide\(s\): S\d{4}") as caught:
        train_cross_validated(tiny_cohort, tiny_features, out, TINY, progress=False)
    assert "nothing was written for this fold" in str(caught.value)
    assert sorted(p.name for p in (out / "fold_0").iterdir()) == ["fold.json"]  # no checkpoint, predictions or marker


def test_changed_inputs_are_not_taken_as_finished(tiny_cohort, tiny_features, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(tiny_features, features)
    out = tmp_path / "run"
    train_cross_validated(tiny_cohort, features, out, TINY, progress=False)
    stamps = {k: (out / f"fold_{k}" / "checkpoint.pt").stat().st_mtime_ns for k in (0, 1)}
    train_cross_validated(tiny_cohort, features, out, TINY, progress=False)  # same inputs: both folds reused
    assert {k: (out / f"fold_{k}" / "checkpoint.pt").stat().st_mtime_ns for k in (0, 1)} == stamps
    with h5py.File(features / "S0001.h5", "r+") as f:  # re-extracted differently: every fold trained on or tested S0001
        f["features"][0, 0] = f["features"][0, 0] + 1.0
    train_cross_validated(tiny_cohort, features, out, TINY, progress=False)
    assert all((out / f"fold_{k}" / "checkpoint.pt").stat().st_mtime_ns != stamps[k] for k in (0, 1))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "nosuch"], "Unknown model(s) ['nosuch']"),
        (["--model", "cnn"], "do not run on this cohort's slides"),
        (["--set", "lr=-1"], "The training option 'lr' must be a float > 0. Got -1.0 instead."),
        (["--set", "nosuch=1"], "unknown TrainConfig option 'nosuch'"),
        (["--device", "cuda:x"], "The training option 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_a_bad_model_or_option_writes_no_run_folder(tiny_cohort, tiny_features, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(_train_args(tiny_cohort, tiny_features, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_device_cuda_without_cuda_is_exit_2_before_anything_is_written(tiny_run, tiny_cohort, tiny_features, tmp_path, capsys, monkeypatch):
    from persam_lib.explain.attention import ExplainConfig, explain_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert main(_train_args(tiny_cohort, tiny_features, out, "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "The device 'cuda' was asked for" in err and "CUDA is not available on this machine" in err and "Use --device auto" in err and "--device cpu" in err
    assert not out.exists()
    assert main(["compare", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--models", "persam", "--out", str(tmp_path / "cmp"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        explain_run(tiny_run, tiny_cohort, tiny_features, config=ExplainConfig(device="cuda"), progress=False)


def test_metrics_are_strict_json_and_read_back_as_nan(tiny_run, tiny_cohort, tiny_features, tmp_path, monkeypatch):
    assert math.isfinite(_strict((tiny_run.path / "metrics.json").read_text())["overall"]["balanced_accuracy"])
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.path, copy)
    real = run_module.summarise

    def undefined(*args, **kwargs):  # as on a cohort where AUROC and its CI are undefined
        out = real(*args, **kwargs)
        out.update(auroc=float("nan"), auroc_low=np.float64("nan"), auroc_high=float("inf"))
        return out

    monkeypatch.setattr(run_module, "summarise", undefined)
    stamp = (copy / "fold_0" / "checkpoint.pt").stat().st_mtime_ns
    run = train_cross_validated(tiny_cohort, tiny_features, copy, tiny_run.config, progress=False)  # folds reused, metrics rewritten
    assert (copy / "fold_0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    text = (copy / "metrics.json").read_text()
    overall = _strict(text)["overall"]
    assert overall["auroc"] is None and overall["auroc_low"] is None and overall["auroc_high"] is None
    assert "NaN" not in text and "Infinity" not in text
    assert math.isnan(run.metrics["overall"]["auroc"])  # readers get NaN back
    table = comparison_table([run])
    assert table["auroc"].dtype.kind == "f" and table["auroc"].isna().all()
    for name in ("config.json", "schema.json", "inputs.json", "fold_0/done.json", "fold_0/fold.json"):
        _strict((copy / name).read_text())


def test_explain_metrics_and_sidecars_are_strict_json(tmp_path):
    from persam_lib.explain.report import ExplanationReport, write_metrics

    table = pd.DataFrame({"field": ["site", "age"], "jsd": [np.nan, np.inf], "flipped": [np.bool_(True), np.bool_(False)]})
    report = ExplanationReport("persam", shift=table, shift_summary=table, null_tests=table, moved={"moved": float("nan")})
    text = write_metrics([report], tmp_path / "metrics.json").read_text()
    rows = _strict(text)["persam"]["shift_summary"]
    assert rows[0]["jsd"] is None and rows[1]["jsd"] is None and rows[0]["flipped"] is True
    assert _strict(text)["persam"]["moved_to_new_region"] == {"moved": None}


def test_an_unsafe_tag_in_an_alterations_file_is_one_line_with_its_line(tiny_run, tiny_cohort, tmp_path, capsys):
    bad = tmp_path / "alterations.yaml"
    bad.write_text("alterations:\n  - {site: nodal}\n  - !!python/object/apply:os.system ['echo owned']\n")
    out = tmp_path / "attention.csv"
    assert main(["explain", str(tiny_run.path), "--manifest", str(tiny_cohort.manifest_path), "--alterations", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{bad}, line 3: uses a YAML tag that is not plain data" in err and "python/object/apply:os.system" in err
    assert not out.exists()


def test_an_unsafe_tag_in_a_sweep_file_is_exit_2_with_its_line(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("name: s\nnotebooks:\n  - notebook: toy\n    points: [{x: !!python/object/apply:os.system ['echo owned']}]\n")
    result = subprocess.run([str(PERSAM), "sweep", str(bad), "--project", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("persam sweep: error:")
    assert f"{bad}, line 4: uses a YAML tag that is not plain data" in err
    assert not (tmp_path / "runs").exists()
    bad.write_text("notebooks: [\n")
    result = subprocess.run([str(PERSAM), "sweep", str(bad), "--project", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not valid YAML" in result.stderr and "line 2" in result.stderr and "Traceback" not in result.stderr
