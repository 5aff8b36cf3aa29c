"""The whole book path on a tiny cohort: papermill executes every chapter, Jupyter Book compiles them."""
import shutil
from pathlib import Path

import nbformat
import pytest

from persam_lib.book.build import _declared_parameters, execute_notebooks, build_html, read_notebook_specs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    project = tmp_path_factory.mktemp("book_project")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "book", project / "book", ignore=shutil.ignore_patterns("executed"))
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    report = execute_notebooks(project, project / "_work", {"patients": 8, "epochs": 3, "folds": 2, "examples": 1})
    report.build_returncode = build_html(project, strict=True)
    return project, report


def test_every_chapter_executes_and_the_book_builds_without_warnings(built_book):
    project, report = built_book
    assert report.failed == {}, report.failed
    assert set(report.executed) == {s.name for s in read_notebook_specs(ROOT)}
    assert report.build_returncode == 0 and report.ok
    html = project / "_build" / "html"
    for name in report.executed:
        page = (html / "book" / "executed" / f"{name}.html").read_text()
        assert "Traceback" not in page and "<img" in page, name


def test_executed_notebooks_carry_results_and_figures(built_book):
    project, _ = built_book
    images = 0
    for name in ("cohort", "training", "attention", "attributions"):
        nb = nbformat.read(project / "book" / "executed" / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.get("output_type") != "error", f"{name}: {out.get('ename')}: {out.get('evalue')}"
                images += "image/png" in out.get("data", {})
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "work_dir" in injected[0].source
    assert images >= 4
    text = (project / "_build" / "html" / "book" / "executed" / "training.html").read_text()
    assert "balanced_accuracy" in text and "persam" in text and "abmil" in text
    attention = (project / "_build" / "html" / "book" / "executed" / "attention.html").read_text()
    for shown in ("Against the null", "p_value", "mass_diagnostic", "uniform", "random", "site_permuted"):
        assert shown in attention, shown


def test_overrides_reach_only_notebooks_that_declare_them():
    assert "patients" in _declared_parameters(ROOT / "notebooks" / "cohort.ipynb")
    assert "patients" not in _declared_parameters(ROOT / "notebooks" / "training.ipynb")
