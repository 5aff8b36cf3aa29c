"""The book on a user's cohort: what `persam book --manifest M --features DIR` changes (the whole
strict build on the example cohort runs in CI, `make ci-book`)."""
import sys
from pathlib import Path

import pytest
import yaml

from persam_lib.book.build import NotebookSpec, machine_paths, read_notebook_specs, seen_from, toc_without
from persam_lib.book.chapter import setup_chapter
from persam_lib.book.features_section import chapter_features, tissue_and_patches
from persam_lib.book.privacy import scan_for_paths
from persam_lib.book.sweep import Point, Sweep, on_cohort
from persam_lib.book.workspace import Workspace
from persam_lib.cli import main
from persam_lib.cohort.example import make_example_cohort
from persam_lib.cohort.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    manifest = make_example_cohort(out)
    assert main(["import-features", str(out / "trident"), "--manifest", str(manifest), "--format", "trident", "--out", str(out / "features")]) == 0
    return manifest, out / "features"


def test_the_committed_example_is_what_the_generator_writes(example):
    manifest, _ = example
    for name in ("manifest.yaml", "slides.csv", "records.csv"):
        assert (manifest.parent / name).read_text() == (ROOT / "data_manifests" / "example" / name).read_text(), name
    cohort = load_manifest(manifest)
    assert cohort.schema.label.classes == ("CR", "PR", "SD") and "site" not in cohort.schema.names and cohort.truth_path is None


def test_features_brought_by_the_user_are_read_and_never_written(example, tmp_path):
    manifest, features = example
    before = sorted((p.name, p.stat().st_mtime_ns) for p in features.rglob("*"))
    chapter = setup_chapter(tmp_path / "work", "", manifest, features)
    assert chapter.ws.features_given and chapter.ws.features_dir == features.resolve() and chapter.ws.out.features_dir == features.resolve()
    found = chapter_features(chapter, "stats")
    assert len(found.bags) == 18 and not found.failed and "Features brought with the cohort" in found.line.data and str(features) not in found.line.data
    assert next(iter(found.bags.values())).features.shape[1] == 64
    figure = tissue_and_patches(chapter, found)  # imported features have no tissue mask: drawn without one
    assert len(figure.axes) >= 2
    assert sorted((p.name, p.stat().st_mtime_ns) for p in features.rglob("*")) == before  # nothing written into the user's folder
    assert not (tmp_path / "work" / "features").exists()
    assert Workspace.of(tmp_path).features_dir == (tmp_path / "features").resolve() and not Workspace.of(tmp_path).features_given


def test_path_parameters_reach_notebooks_relative_to_the_project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    assert seen_from(root, root / "_work" / "x") == "_work/x"
    assert seen_from(root, tmp_path / "data" / "manifest.yaml") == "../data/manifest.yaml"
    assert seen_from(root, "") == "" and seen_from(root, 3) == 3
    folders = machine_paths(root, root / "_work", {"manifest": str(tmp_path / "data" / "manifest.yaml"), "features_dir": str(tmp_path / "feats")})
    home = [Path.home()] if len(Path.home().parts) >= 3 else []
    expected = [root.resolve(), (root / "_work").resolve(), *home, (tmp_path / "data").resolve(), (tmp_path / "feats").resolve()]
    assert [f for f in folders if f != Path(sys.prefix).resolve()] == expected
    if sys.prefix != sys.base_prefix:  # a library's warning prints the virtual environment's path
        assert Path(sys.prefix).resolve() in folders


def test_the_privacy_scan_finds_a_machine_path_on_a_page(tmp_path):
    html = tmp_path / "html"
    html.mkdir()
    (html / "clean.html").write_text("<p>work folder _work/demo</p>")
    (html / "leaky.html").write_text(f"<p>work_dir = '{tmp_path / 'project' / '_work'}'</p>")
    leaks = scan_for_paths(html, [tmp_path / "project"])
    assert [leak.file.name for leak in leaks] == ["leaky.html"] and leaks[0].kind == "machine path"


def test_the_image_chapter_leaves_a_book_on_your_cohort_without_images(tmp_path):
    specs = {s.name: s for s in read_notebook_specs(ROOT)}
    assert specs["radiographs"].image_cohort and not specs["training"].image_cohort
    assert specs["radiographs"].left_out_because({"manifest": "m.yaml"})
    assert not specs["radiographs"].left_out_because({"manifest": "m.yaml", "image_manifest": "i.yaml"})
    assert not specs["radiographs"].left_out_because({})  # the demo book has its radiographs
    assert "--set new_manifest=" in specs["new_patients"].left_out_because({"manifest": "m.yaml"})  # the demo's new patients are not yours
    assert not specs["new_patients"].left_out_because({"manifest": "m.yaml", "new_manifest": "n.yaml"}) and not specs["new_patients"].left_out_because({})
    (tmp_path / "_toc.yml").write_text((ROOT / "_toc.yml").read_text())
    toc = yaml.safe_load(toc_without(tmp_path, ("radiographs",)).read_text())
    files = [c["file"] for c in toc["chapters"]]
    assert "book/executed/radiographs" not in files and "book/executed/training" in files and toc["root"] == "book/intro"


def test_sweep_points_run_on_the_books_cohort(tmp_path):
    training = ROOT / "notebooks" / "training.ipynb"
    sweep = Sweep("s", tmp_path, [Point("training", training, {"seed": 1})])
    moved = on_cohort(sweep, manifest="data/m.yaml", features_dir="", image_manifest="x.yaml")
    assert moved.points[0].parameters == {"manifest": "data/m.yaml", "seed": 1}  # empty and undeclared inputs are not passed
    assert moved.points[0].key != sweep.points[0].key and on_cohort(sweep) is sweep


def test_book_refuses_features_without_a_manifest_and_a_missing_manifest(tmp_path, capsys):
    assert main(["book", "--work", str(tmp_path), "--features", str(tmp_path)]) == 2
    assert "--features needs --manifest" in capsys.readouterr().err
    assert main(["book", "--work", str(tmp_path), "--manifest", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_papermills_absolute_paths_are_made_relative_in_the_published_copy(tmp_path):
    import json

    from persam_lib.book.build import relative_papermill_paths

    root = tmp_path / "project"
    (root / "book" / "executed").mkdir(parents=True)
    notebook = root / "book" / "executed" / "cohort.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {"papermill": {"input_path": str(root / "notebooks" / "cohort.ipynb"), "output_path": str(root / "book" / "executed" / ".cohort.running.ipynb"), "parameters": {"work_dir": "_work/x"}}}}))
    relative_papermill_paths(notebook, root)
    meta = json.loads(notebook.read_text())["metadata"]["papermill"]
    assert meta == {"input_path": "notebooks/cohort.ipynb", "output_path": "book/executed/cohort.ipynb", "parameters": {"work_dir": "_work/x"}}
    assert str(tmp_path) not in notebook.read_text()


def test_chapters_describe_your_cohort_not_the_demos(example, tiny_cohort_dir, tmp_path):
    from persam_lib.book.sections import cohort_description, deciding_field_note
    from persam_lib.cohort.demo import DESCRIPTION

    manifest, features = example
    yours = setup_chapter(tmp_path / "a", "", manifest, features)
    text = cohort_description(yours).data + deciding_field_note(yours).data
    assert "`prostate-pilot`" in text and "CR, PR, SD" in text and "no ground truth" in text
    assert not any(demo in text for demo in ("site", "nodal", "ldh", "nodular"))
    with_truth = setup_chapter(tmp_path / "b", "", tiny_cohort_dir / "manifest.yaml")
    assert "`site`" in deciding_field_note(with_truth).data and "`age`" in deciding_field_note(with_truth).data
    demo_dir = tmp_path / "c" / "cohort"
    import shutil

    shutil.copytree(tiny_cohort_dir, demo_dir)
    assert cohort_description(setup_chapter(tmp_path / "c", "", "")).data == DESCRIPTION  # the demo cohort's own design
