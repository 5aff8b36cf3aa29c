"""The whole book path on a tiny cohort: papermill executes every chapter, Jupyter Book compiles them."""
import shutil
from pathlib import Path

import nbformat
import pytest

from persam_lib.book.build import build_html, execute_notebooks, read_notebook_specs
from persam_lib.book.parameters import declared_parameters

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the whole book on a tiny cohort (about 4 minutes on 2 cores): `make test-slow`, and CI


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    project = tmp_path_factory.mktemp("book_project")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "book", project / "book", ignore=shutil.ignore_patterns("executed"))
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    tiny_sweep = project / "book" / "sweeps" / "tiny.yaml"
    tiny_sweep.write_text("name: tiny\nnotebooks:\n  - notebook: training\n    grid: {seed: [0, 1]}\n    parameters: {models: [abmil], epochs: 2, folds: 2, workers: 1}\n")
    overrides = {"patients": 8, "epochs": 3, "folds": 2, "examples": 1, "slides": 4, "workers": 1, "sweep_file": str(tiny_sweep), "ablation": False, "new_patients": 6}  # the ablation has its own tests
    report = execute_notebooks(project, project / "_work", overrides)
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
        assert "Traceback" not in page and ("<img" in page or name == "reproducibility"), name  # every chapter but the tables-only one draws


def test_executed_notebooks_carry_results_and_figures(built_book):
    project, _ = built_book
    images = 0
    for name in ("cohort", "features", "training", "attention", "attributions", "new_patients", "sweeps", "reproducibility"):
        nb = nbformat.read(project / "book" / "executed" / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.get("output_type") != "error", f"{name}: {out.get('ename')}: {out.get('evalue')}"
                images += "image/png" in out.get("data", {})
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "work_dir" in injected[0].source
    assert images >= 4
    text = (project / "_build" / "html" / "book" / "executed" / "training.html").read_text()
    assert "balanced accuracy [95% CI]" in text and "persam" in text and "abmil" in text  # the rendered table, not code
    attention = (project / "_build" / "html" / "book" / "executed" / "attention.html").read_text()
    for shown in ("Against the null", "p_value", "mass_diagnostic", "uniform", "random", "site_permuted"):
        assert shown in attention, shown


def test_overrides_reach_only_notebooks_that_declare_them(built_book):
    project, report = built_book
    for name in report.executed:  # the build gave every override to every chapter it could reach
        nb = nbformat.read(project / "book" / "executed" / f"{name}.ipynb", as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        given = {line.split("=", 1)[0].strip() for line in injected.source.splitlines() if "=" in line and not line.startswith("#")}
        declared = set(declared_parameters(project / "notebooks" / f"{name}.ipynb"))
        assert given <= declared, f"{name} received parameters it does not declare: {sorted(given - declared)}"
        assert ("patients" in given) == ("patients" in declared), name
    cohort = nbformat.read(project / "book" / "executed" / "cohort.ipynb", as_version=4)
    assert "patients = 8" in next(c for c in cohort.cells if "injected-parameters" in c.metadata.get("tags", [])).source


def test_every_chapter_records_its_results_and_provenance(built_book):
    from persam_lib.book.results import read_sidecar

    project, report = built_book
    for name in report.executed:
        record = read_sidecar(project / "book" / "executed" / f"{name}.results.json")
        assert record.error is None and record.provenance["parameters"]["work_dir"] == "_work", name  # relative to the project: no machine path on a page
        assert record.provenance["git_commit"] and "torch" in record.provenance["packages"], name
        if name != "reproducibility":
            assert record.results, name
    training = read_sidecar(project / "book" / "executed" / "training.results.json")
    assert training.parameters["epochs"] == 3 and 0 <= training.results["persam_balanced_accuracy"] <= 1
    assert "This chapter was computed with" in (project / "_build" / "html" / "book" / "executed" / "training.html").read_text()


def test_the_built_book_leaks_no_identifying_value(built_book):
    from persam_lib.book.build import privacy_scan

    project, _ = built_book
    manifest = project / "_work" / "cohort" / "manifest.yaml"
    assert privacy_scan(project / "_build" / "html", manifest) == []
    mrn = (project / "_work" / "cohort" / "clinical.csv").read_text().splitlines()[1].split(",")[1]
    assert mrn.startswith("MRN-")
    leaked = project / "_build" / "html" / "book" / "leak.html"
    leaked.write_text(f"<p>{mrn}</p>")
    try:
        assert privacy_scan(project / "_build" / "html", manifest) == [f"{leaked}: identifying field 'mrn' {mrn!r}"]
    finally:
        leaked.unlink()
    # the radiograph chapter's cohort and the new patients chapter's are scanned too
    from persam_lib.book.build import book_cohort_manifests

    manifests = book_cohort_manifests(project / "_work")
    assert manifests == [manifest, project / "_work" / "radiographs" / "manifest.yaml", project / "_work" / "new_patients" / "cohort" / "manifest.yaml"]
    assert privacy_scan(project / "_build" / "html", manifests) == []
    radiograph_mrn = (project / "_work" / "radiographs" / "clinical.csv").read_text().splitlines()[1].split(",")[1]
    leaked.write_text(f"<p>{radiograph_mrn}</p>")
    try:
        assert privacy_scan(project / "_build" / "html", manifests) == [f"{leaked}: identifying field 'mrn' {radiograph_mrn!r}"]
    finally:
        leaked.unlink()


@pytest.mark.skipif(not __import__("shutil").which("chromium") and __import__("os").environ.get("PERSAM_REQUIRE_BROWSER") != "1", reason="needs Chromium (make test installs it)")
def test_the_built_book_opens_in_a_browser(built_book, tmp_path):
    from persam_lib.book.browser import check_book

    project, report = built_book
    result = check_book(project / "_build" / "html", screenshot=tmp_path / "index.png")
    assert result.ok, [p.problems for p in result.pages]
    pages = {p.page for p in result.pages}
    assert {f"book/executed/{name}.html" for name in report.executed} <= pages and "book/api.html" in pages
    assert sum(p.images for p in result.pages) >= 8 and (tmp_path / "index.png").stat().st_size > 10_000
    new_patients = next(p for p in result.pages if p.page == "book/executed/new_patients.html")
    assert new_patients.controls >= 2 and len(new_patients.figure_shots) == 1  # the what-if figure: every button clicked (one example slide)
    assert result.line().count("control(s) clicked") == 1


def test_reproduce_a_chapter_of_the_built_book(built_book):
    from persam_lib.book.reproduce import reproduce

    project, _ = built_book
    result = reproduce(project / "book" / "executed" / "training.ipynb", cwd=project)
    assert result.ok, result.comparison
    assert (result.comparison["difference"] == 0).all()  # the same CPU and seed: identical numbers
