"""Distributed training (torchrun + DistributedDataParallel) on CPU with the gloo backend."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from persam_lib.cli import main
from persam_lib.train.distributed import Distributed, from_environment

# no dropout: each rank draws its own dropout masks, so only then is the 2-rank run the 1-process run
OPTIONS = ["--folds", "2", "--epochs", "3", "--set", "dropout=0", "--set", "batch_size=3", "--set", "val_fraction=0.25", "--set", "d_model=16", "--set", "n_heads=2"]


def test_two_ranks_train_the_model_one_process_trains(tiny_cohort, tiny_features, tmp_path):
    args = [str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "persam"] + OPTIONS
    assert main(["train", *args, "--out", str(tmp_path / "single")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")} | {"OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "persam_lib.cli", "train", *args, "--out", str(tmp_path / "ddp")]
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train persam: balanced accuracy") == 1  # only rank 0 prints
    single = pd.read_csv(tmp_path / "single" / "predictions.csv")
    ddp = pd.read_csv(tmp_path / "ddp" / "predictions.csv")
    assert list(single["patient_id"]) == list(ddp["patient_id"])
    np.testing.assert_allclose(ddp[["prob_A", "prob_B"]], single[["prob_A", "prob_B"]], atol=1e-4)
    history = pd.read_csv(tmp_path / "ddp" / "fold_0" / "history.csv")
    np.testing.assert_allclose(history["train_loss"], pd.read_csv(tmp_path / "single" / "fold_0" / "history.csv")["train_loss"], rtol=1e-4)
    assert not list((tmp_path / "ddp").glob("fold_*/resume.pt"))


def test_launch_environment_is_read_and_shared_out(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert from_environment() == Distributed()  # no launch: a plain single process
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == Distributed(rank=3, world_size=4, local_rank=1)
    rank1 = Distributed(rank=1, world_size=3)
    assert rank1.share(list(range(8))) == [1, 4, 7] and not rank1.is_main and rank1.enabled
    assert Distributed().share([1, 2]) == [1, 2] and Distributed().sum([1.5, 2.0], device=None) == [1.5, 2.0]


def test_incomplete_launch_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="launch distributed training with torchrun"):
        from_environment()
