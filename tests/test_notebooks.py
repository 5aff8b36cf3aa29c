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
    pages = {c for c in chapters if (ROOT / f"{c}.md").is_file()}  # written pages (API reference, architecture), not executed
    assert "book/api" in pages and chapters - pages == {f"book/executed/{entry['name']}" for entry in plan["notebooks"]}
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"


def _code(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_is_set_up_by_one_library_call(path):
    code = _code(path)
    assert "setup_chapter(" in code[1], "the cell after the parameters sets the chapter up"
    for repeated in ("Workspace.of(", "load_manifest(", "load_truth(", "use_book_style(", "warnings.filterwarnings(", "display.float_format"):
        assert not any(repeated in cell for cell in code), f"{path.name}: {repeated} belongs to setup_chapter"


def _demo_names() -> set[str]:
    """The names the demo cohorts give their deciding field, its values and their regions."""
    from persam_lib.cohort import demo, demo_images

    names = set()
    for module in (demo, demo_images):
        names |= {module.DECIDING_FIELD, *module.DIAGNOSTIC_REGION, *module.DIAGNOSTIC_REGION.values()}
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_chapter_logic_names_a_demo_field_value_region_or_sample(path):
    import re

    assert {"site", "presentation", "nodal", "focal", "nodular", "opacity"} <= _demo_names()  # the check knows the demo's names
    pattern = re.compile(r"\b(" + "|".join(sorted(_demo_names())) + r")\b|\b[SIP]\d{4}\b")
    hits = [(i, m.group(0)) for i, cell in enumerate(_code(path)) for m in pattern.finditer(cell)]
    assert hits == [], f"{path.name}: code cells name the demo's {hits}; choose from the ground truth or the data instead"


def test_the_explanation_chapters_show_their_sections_through_the_same_calls():
    import ast

    shared = ("explain_models(", "shift_table(", "shift_figure(", "null_test_section(", "truth_section(", "comparison_figures(", "example_samples(", "explanation_results(")
    for name in ("attention", "radiographs"):
        code = _code(ROOT / "notebooks" / f"{name}.ipynb")
        text = "\n".join(code)
        assert [call for call in shared if call not in text] == [], name
        loops = [cell for cell in code if any(isinstance(node, ast.For) for node in ast.walk(ast.parse(cell)))]
        assert loops == [], f"{name}: a loop in a cell is logic that belongs to the library"
