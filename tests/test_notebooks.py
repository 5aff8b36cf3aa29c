"""Source notebooks: parameterised, output-free, runnable by papermill."""
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3" and "language_info" in nb.metadata
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "work_dir" in tagged[0].source and "output_dir" in tagged[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is tagged[0], "the parameters cell must be the first code cell (provenance reads it back)"
    assert "show_provenance()" in code[-1].source, "every chapter ends with its provenance"
    if path.stem != "reproducibility":
        assert any("publish_results(" in c.source for c in code), "every chapter publishes its key results"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} carries outputs"


def test_book_plan_lists_every_notebook_and_toc_lists_every_chapter():
    plan = yaml.safe_load((ROOT / "book" / "notebooks.yaml").read_text())
    sources = {ROOT / entry["source"] for entry in plan["notebooks"]}
    assert sources == set(NOTEBOOKS)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = {c["file"] for c in toc["chapters"]}
    assert chapters == {f"book/executed/{entry['name']}" for entry in plan["notebooks"]} | {"book/api"}
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
