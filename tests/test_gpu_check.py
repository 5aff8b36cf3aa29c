"""`make gpu-check DRY=1`: the GPU check's whole plan on the CPU at toy sizes, one table out."""
import json
import subprocess
from pathlib import Path

from benchmarks.gpu_check import PARTS, main, make_plan

ROOT = Path(__file__).resolve().parents[1]


def test_the_dry_run_measures_every_part_and_writes_one_table(tmp_path):
    assert main(["--dry", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = {row["part"] for row in record["rows"]}
    assert parts == {name for name, _ in PARTS}, parts  # every part ran and reported
    assert all(row["status"] in ("ok", "skipped") for row in record["rows"]), record["rows"]
    steps = [r for r in record["rows"] if r["part"] == "PersAM vs ABMIL step"]
    assert len(steps) == len(make_plan(True).model_sizes) and all("×" in r["value"] for r in steps)
    ddp = next(r for r in record["rows"] if r["part"] == "DDP")
    assert ddp["status"] == "ok" and "gloo" in ddp["measure"]  # two CPU processes hold the same weights after one step
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("# gpu-check (dry run, CPU, toy sizes)") and table.count("\n| ") == len(record["rows"]) + 1


def test_make_gpu_check_runs_the_dry_plan_with_dry_1_and_the_gpu_plan_without():
    dry = subprocess.run(["make", "-n", "gpu-check", "DRY=1"], cwd=ROOT, capture_output=True, text=True).stdout
    real = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "benchmarks.gpu_check --dry" in dry and "benchmarks.gpu_check" in real and "--dry" not in real
    gpu = make_plan(False)
    assert gpu.device == "cuda" and max(gpu.model_sizes) == 200_000 and gpu.big_bag == 100_000 and ("uni", {}) in gpu.encoders


def test_without_a_gpu_the_real_plan_says_how_to_dry_run(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2
    assert "make gpu-check DRY=1" in capsys.readouterr().err
