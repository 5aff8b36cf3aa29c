import json

import nbformat
import papermill as pm
import pytest

from notebook_factory import write_notebook
from persam_lib.book.reproduce import reproduce
from persam_lib.book.results import RESULTS_MIME, read_notebook_record, sidecar_path, write_sidecar
from persam_lib.cli import main


@pytest.fixture
def published(tmp_path):
    source = write_notebook(tmp_path / "toy.ipynb")
    executed = tmp_path / "published" / "toy.ipynb"
    executed.parent.mkdir()
    pm.execute_notebook(str(source), str(executed), parameters={"work_dir": str(tmp_path / "work"), "x": 3, "scale": 0.5}, kernel_name="python3", progress_bar=False)
    return executed


def test_an_executed_notebook_records_results_provenance_and_parameters(published):
    record = read_notebook_record(published)
    assert record.results == {"double": 3.0, "label": "a"} and record.tolerances["double"] == 0.0
    assert record.parameters["x"] == 3 and record.notebook.endswith("toy.ipynb") and record.error is None
    assert record.provenance["parameters"] == {"work_dir": record.parameters["work_dir"], "output_dir": "", "x": 3, "scale": 0.5, "fail": False, "label": "a"}
    assert record.provenance["seed"] is None and "torch" in record.provenance["packages"] and record.provenance["git_commit"]
    sidecar = json.loads(write_sidecar(published).read_text())
    assert sidecar_path(published).name == "toy.results.json" and sidecar["results"]["double"] == 3.0


def test_reproduce_matches_and_reports_a_mismatch(published, tmp_path, capsys):
    result = reproduce(published, work_dir=tmp_path / "work", cwd=tmp_path)
    assert result.ok and list(result.comparison["result"]) == ["double", "label"] and (result.comparison["difference"].dropna() == 0).all()
    assert result.executed.is_relative_to(tmp_path / "work" / "reproduce")
    nb = nbformat.read(published, as_version=4)  # tamper with the published number
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if RESULTS_MIME in output.get("data", {}):
                output["data"][RESULTS_MIME]["results"]["double"] = 3.5
    nbformat.write(nb, published)
    assert main(["reproduce", str(published), "--work", str(tmp_path / "work"), "--project", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "1 MISMATCH(ES)" in out and "3.5" in out
    assert main(["reproduce", str(published), "--work", str(tmp_path / "work"), "--project", str(tmp_path), "--tolerance", "1"]) == 0
    assert main(["reproduce", str(tmp_path / "missing.ipynb")]) == 2
