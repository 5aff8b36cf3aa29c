"""One writer per output folder: a second train, compare or sweep on a busy folder stops at once
(exit 2, naming the holder) and writes nothing; stale temporary files of dead writers are cleared."""
import os
import subprocess
import sys
import time
from pathlib import Path

from notebook_factory import write_notebook
from persam_lib.cli import main
from persam_lib.io.locks import LOCK_NAME, OWNER_NAME, output_lock
from persam_lib.train.loop import TrainConfig
from persam_lib.train.run import Run, train_cross_validated

PERSAM = Path(sys.executable).parent / "persam"
TINY_FLAGS = ["--folds", "2", "--epochs", "1", "--set", "patience=1", "--set", "val_fraction=0.25", "--set", "d_model=16", "--set", "n_heads=2", "--set", "n_layers=1"]
BUSY = "another persam run is working on this folder (persam test-holder, pid"


def _only_lock_files(folder: Path) -> bool:
    return {p.name for p in folder.iterdir()} <= {LOCK_NAME, OWNER_NAME}


def test_a_second_train_on_a_busy_run_folder_exits_2_at_once_and_writes_nothing(tiny_cohort, tiny_features, tmp_path, capsys):
    out = tmp_path / "run"
    command = [str(PERSAM), "train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--out", str(out), *TINY_FLAGS]
    with output_lock(out, "test-holder"):
        start = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - start
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.startswith("persam train: error:") and BUSY in result.stderr and f"pid {os.getpid()}" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert elapsed < 60  # it did not wait for the holder (nor train)
        assert _only_lock_files(out)
    # once the holder is gone, the same command trains (in-process here: the lock is per folder, not per process)
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--out", str(out), *TINY_FLAGS]) == 0
    assert Run(out).finished_folds == [0, 1]
    assert not (out / OWNER_NAME).exists()  # released


def test_compare_locks_its_folder_and_each_run_folder(tiny_cohort, tiny_features, tmp_path, capsys):
    out = tmp_path / "compare"
    args = ["compare", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--models", "persam,clinical_only", "--out", str(out), *TINY_FLAGS]
    with output_lock(out, "test-holder"):
        assert main(args) == 2
        assert BUSY in capsys.readouterr().err
        assert _only_lock_files(out)
    with output_lock(out / "clinical_only", "test-holder"):  # someone trains one of compare's run folders
        assert main(args) == 2
        err = capsys.readouterr().err
        assert BUSY in err and f"{out / 'clinical_only'}: another persam run" in err
        assert _only_lock_files(out / "clinical_only") and not (out / "comparison.csv").exists()
    assert main(args) == 0  # the persam run finished above is reused, clinical_only trains, the table is written
    assert (out / "comparison.csv").is_file() and not (out / OWNER_NAME).exists()


def test_a_second_sweep_on_a_busy_out_folder_exits_2_and_runs_no_point(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    write_notebook(project / "toy.ipynb")
    sweep = project / "sweep.yaml"
    sweep.write_text("notebooks:\n  - notebook: toy.ipynb\n    points: [{x: 1}]\n")
    out = tmp_path / "points"
    with output_lock(out, "test-holder"):
        result = subprocess.run([str(PERSAM), "sweep", str(sweep), "--out", str(out), "--work", str(tmp_path / "work"), "--project", str(project)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.startswith("persam sweep: error:") and BUSY in result.stderr and "Traceback" not in result.stderr
        assert _only_lock_files(out)  # no point folder, no results table


def test_stale_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tiny_run, tiny_cohort, tiny_features, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [run_dir / f".metrics.json.{dead.pid}.tmp", run_dir / "fold_1" / f".checkpoint.pt.{dead.pid}.tmp"]
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a writer that is still alive
    try:
        live = run_dir / f".predictions.csv.{writer.pid}.tmp"
        for path in [*stale, live]:
            path.write_text("half-written")
        (run_dir / "fold_1" / "done.json").unlink()  # fold 1 unfinished: its folder is cleaned when it is redone
        train_cross_validated(tiny_cohort, tiny_features, run_dir, TrainConfig(**tiny_run.config.__dict__), progress=False)
        assert not any(p.exists() for p in stale)
        assert live.exists()
    finally:
        writer.kill()
        writer.wait()
