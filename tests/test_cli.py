import subprocess
import sys
from pathlib import Path

import pandas as pd

from persam_lib.cli import main


def test_cli_end_to_end(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    assert main(["demo-cohort", str(cohort), "--patients", "6", "--seed", "2"]) == 0
    manifest = cohort / "manifest.yaml"
    assert main(["validate", str(manifest)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["extract", str(manifest), "--out", str(tmp_path / "features")]) == 0
    assert main(["train", str(manifest), "--features", str(tmp_path / "features"), "--model", "persam", "--out", str(tmp_path / "run"), "--folds", "2", "--epochs", "2"]) == 0
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(predictions) == 6 and predictions["patient_id"].is_unique
    out = tmp_path / "attention.csv"
    assert main(["explain", str(tmp_path / "run"), "--manifest", str(manifest), "--alter", "site=nodal", "--alter", "sex=F;age=30", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns)[:6] == ["slide_id", "x", "y", "size", "record", "attention"]
    assert set(table["record"]) == {"original", "site=nodal", "sex=F;age=30"}
    metrics, figures = tmp_path / "metrics.json", tmp_path / "figures"
    args = ["explain", str(tmp_path / "run"), "--manifest", str(manifest), "--out", str(tmp_path / "all.parquet"), "--metrics", str(metrics), "--figures", str(figures), "--figure-slides", "1"]
    assert main(args) == 0
    assert {"shift_summary", "null_tests", "truth"} <= set(__import__("json").loads(metrics.read_text())["persam"])
    assert len(list(figures.glob("*.png"))) == 2
    assert main(["explain", str(tmp_path / "run"), "--manifest", str(manifest), "--out", str(out), "--alter", "site=mars"]) == 2
    assert main(["explain", str(tmp_path / "run"), "--manifest", str(manifest), "--out", str(out), "--null-field", "stage"]) == 2
    assert main(["explain", str(tmp_path / "run"), "--manifest", str(manifest), "--out", str(tmp_path / "att.txt")]) == 2


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text("cohort: x\n")
    assert main(["validate", str(tmp_path / "m.yaml")]) == 2
    err = capsys.readouterr().err
    assert "persam validate: error:" in err and "needs exactly one of the keys 'slides' and 'images'" in err and "Traceback" not in err


def test_persam_console_script_is_installed():
    script = Path(sys.executable).parent / "persam"  # the console script pip installed beside this interpreter
    assert script.is_file(), f"no persam console script in {script.parent}: run `pip install -e .`"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo-cohort", "validate", "extract", "import-features", "train", "compare", "explain", "book"):
        assert command in result.stdout


def test_compare_trains_models_on_identical_folds(tiny_cohort, tiny_features, tmp_path, capsys):
    out = tmp_path / "compare"
    code = main(["compare", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--models", "persam,clinical_only,transmil", "--out", str(out), "--folds", "2", "--epochs", "2", "--workers", "2"])
    assert code == 0
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["model"]) == ["persam", "clinical_only", "transmil"]
    assert {"balanced_accuracy", "balanced_accuracy_low", "auroc", "f1_A", "f1_B"} <= set(table.columns)
    folds = [pd.read_csv(out / m / "folds.csv") for m in ("persam", "clinical_only", "transmil")]
    assert folds[0].equals(folds[1]) and folds[0].equals(folds[2])
    assert main(["compare", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--models", "persam,gpt5", "--out", str(out)]) == 2
    assert "Unknown model(s) ['gpt5']" in capsys.readouterr().err
