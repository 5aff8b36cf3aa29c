"""Cohorts of 2-D images: manifest, the demo radiographs, reading them, and the whole pipeline on them."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from persam_lib.cli import main
from persam_lib.cohort.demo_images import RadiographCohortConfig, make_radiograph_cohort
from persam_lib.cohort.manifest import ManifestError, load_manifest
from persam_lib.cohort.truth import load_truth
from persam_lib.images import ImageReadError, read_image
from persam_lib.train.data import FeatureNormaliser, ImageInput, load_images, load_sample
from persam_lib.train.loop import TrainConfig
from persam_lib.train.run import Run, compare_models

TINY = RadiographCohortConfig(patients=12, seed=5, size=128, lesion_radius=10, png_every=4)
SMALL_MODEL = dict(n_folds=2, epochs=2, patience=2, val_fraction=0.25, d_model=16, n_heads=2, n_layers=1, image_size=64, grid_cell=16, batch_size=4)


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("radiographs")
    make_radiograph_cohort(out, TINY, progress=False)
    return out


@pytest.fixture(scope="module")
def image_runs(radiographs, tmp_path_factory):
    cohort = load_manifest(radiographs / "manifest.yaml")
    out = tmp_path_factory.mktemp("image_runs")
    compare_models(cohort, None, out, ["persam", "mma_mgmu", "cnn_concat"], TrainConfig.of(**SMALL_MODEL), progress=False)
    return cohort, out


def _copy(radiographs: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(radiographs, out)
    return out


def test_the_demo_radiograph_cohort_is_an_image_cohort_with_dicom_png_and_ground_truth(radiographs):
    cohort = load_manifest(radiographs / "manifest.yaml")
    assert cohort.modality == "images" and cohort.sample_name == "image" and len(cohort.slides) == 12
    suffixes = cohort.slides["path"].str.rsplit(".", n=1).str[-1].value_counts().to_dict()
    assert suffixes == {"dcm": 9, "png": 3}  # every 4th a 16-bit PNG
    pngs = cohort.slides[cohort.slides["path"].str.endswith(".png")]
    assert (pngs["window_width"] == 4096).all() and cohort.slides.loc[~cohort.slides.index.isin(pngs.index), "window_width"].isna().all()
    assert "mrn" not in cohort.clinical and "mrn" in cohort.identifying  # identifying: never a model input
    assert list(cohort.schema.negative_controls) == ["presentation_permuted"]
    # the same image read from DICOM (file's window) and from PNG (the table's window) looks the same
    dicom = cohort.slides.iloc[0]
    pixels = read_image(dicom["path"])
    assert pixels.shape == (128, 128, 1) and 0 <= pixels.min() and pixels.max() <= 1
    truth = load_truth(cohort)
    mask = truth.mask(dicom["slide_id"])
    assert pixels[mask == 0].mean() < 0.15 < pixels[mask >= 2].mean()  # dark air, bright lesions
    # the record decides the label through the lesion it names
    regions = truth.regions.set_index("patient_id")
    for pid, row in cohort.clinical.iterrows():
        deciding = regions.loc[pid, "nodule_phenotype" if row["presentation"] == "focal" else "opacity_phenotype"]
        assert row["finding"] == {"A": "benign", "B": "malignant"}[deciding]


def test_images_are_letterboxed_and_their_patch_grid_is_in_original_pixels(radiographs):
    cohort = load_manifest(radiographs / "manifest.yaml")
    bags = load_images(cohort, ImageInput(image_size=64, grid_cell=16))
    bag = bags[0]
    assert bag.features is None and bag.image.shape == (1, 64, 64)
    assert bag.patch_size == 32  # 16 model pixels of a 128-pixel image shown at 64
    assert bag.coords.tolist()[:5] == [[0, 0], [32, 0], [64, 0], [96, 0], [0, 32]]
    normaliser = FeatureNormaliser.fit(bags)
    assert normaliser.mean.shape == (1,)
    pixels = np.stack([normaliser(b.image) for b in bags])
    assert abs(pixels.mean()) < 1e-4 and pixels.std() == pytest.approx(1, abs=1e-3)


def test_grey_images_become_rgb_when_the_cohort_mixes_them(radiographs, tmp_path):
    root = _copy(radiographs, tmp_path)
    table = pd.read_csv(root / "images.csv", keep_default_na=False)
    grey = read_image(root / table.loc[0, "path"])
    Image.fromarray((np.repeat(grey, 3, -1) * 255).astype(np.uint8)).save(root / "images" / "rgb.png")
    table.loc[0, ["path", "window_center", "window_width"]] = ["images/rgb.png", "", ""]
    table.to_csv(root / "images.csv", index=False)
    bags = load_images(load_manifest(root / "manifest.yaml"), ImageInput(64, 16))
    assert {b.image.shape[0] for b in bags} == {3}
    np.testing.assert_allclose(bags[1].image[0], bags[1].image[2])  # grey replicated


def test_image_manifest_errors_name_the_file_line_and_field(radiographs, tmp_path, capsys):
    root = _copy(radiographs, tmp_path)
    table = pd.read_csv(root / "images.csv", keep_default_na=False, dtype=str)
    table.loc[1, "path"] = "images/missing.dcm"
    table.loc[2, "window_center"] = "40"  # a window without a width
    table.loc[3, "image_id"] = table.loc[0, "image_id"]
    table.to_csv(root / "images.csv", index=False)
    with pytest.raises(ManifestError) as err:
        load_manifest(root / "manifest.yaml")
    text = str(err.value)
    assert "images.csv, line 3, field 'path'" in text and "missing.dcm does not exist" in text
    assert "line 4, field 'window_center'" in text and "Give both window_center and window_width" in text
    assert "line 5, field 'image_id'" in text and "appears more than once" in text
    manifest = (root / "manifest.yaml").read_text()
    (root / "manifest.yaml").write_text(manifest + "slides: slides.csv\n")
    with pytest.raises(ManifestError, match="exactly one of the keys 'slides' and 'images' \\(both are given\\)"):
        load_manifest(root / "manifest.yaml")
    (root / "manifest.yaml").write_text(manifest + "window: {center: 1, width: -3}\n")
    with pytest.raises(ManifestError, match="'window.width' must be > 0"):
        load_manifest(root / "manifest.yaml")
    (root / "manifest.yaml").write_text(manifest + "window: {center: .nan, width: 3}\n")
    with pytest.raises(ManifestError, match="'window.center' must be a finite number"):
        load_manifest(root / "manifest.yaml")
    (root / "manifest.yaml").write_text(manifest)
    table.assign(slide_id="S1").to_csv(root / "images.csv", index=False)
    with pytest.raises(ManifestError, match="images.csv, line 1, field 'slide_id': has a 'slide_id' column"):
        load_manifest(root / "manifest.yaml")


def test_a_window_in_a_slide_manifest_is_an_error(cohort_copy):
    manifest = cohort_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text() + "window: {center: 40, width: 400}\n")
    with pytest.raises(ManifestError, match="'window' applies to 2-D images only"):
        load_manifest(manifest)


def test_an_unreadable_image_is_reported_with_its_id_and_the_others_still_checked(radiographs, tmp_path, capsys):
    root = _copy(radiographs, tmp_path)
    paths = pd.read_csv(root / "images.csv")["path"]
    (root / paths[0]).write_bytes(b"not an image at all")
    (root / paths[5]).write_bytes(b"")
    with pytest.raises(ImageReadError) as err:
        load_images(load_manifest(root / "manifest.yaml"))
    text = str(err.value)
    assert text.startswith(str(root / "manifest.yaml")) and "2 image(s) could not be read" in text
    assert "image 'I0001' (patient 'P0001')" in text and "image 'I0006'" in text and "is empty" in text
    assert main(["validate", str(root / "manifest.yaml")]) == 2  # validate decodes every image
    assert "I0006" in capsys.readouterr().err


def test_training_comparing_and_explaining_run_unchanged_on_images(image_runs):
    from persam_lib.explain.attention import explain_run
    from persam_lib.explain.report import explanation_report, write_figures
    from persam_lib.cohort.truth import load_truth

    cohort, out = image_runs
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["model"]) == ["persam", "mma_mgmu", "cnn_concat"] and table["balanced_accuracy"].between(0, 1).all()
    run = Run(out / "persam")
    assert run.inputs["modality"] == "images" and run.inputs["features_dir"] is None
    assert len(run.predictions) == 12 and run.model_for_fold(0).config.input_kind == "image"
    explanation = explain_run(run, cohort, None, progress=False)
    att = explanation.attention
    assert set(att["size"]) == {32} and att["x"].max() == 96  # the 4 x 4 grid, in the 128-pixel images' own pixels
    per_map = att.groupby(["slide_id", "record"])["attention"].sum()
    np.testing.assert_allclose(per_map, 1, atol=1e-5)
    assert att["record"].nunique() > 5  # original + every categorical value + numeric quantiles
    truth = load_truth(cohort)
    assert truth.region_kinds == ["nodule", "opacity"]  # the body label is not a region kind
    report = explanation_report(explanation, cohort, truth)
    assert report.truth_scores["diagnostic_region"].isin(["nodule", "opacity"]).all()
    flipped = report.truth_scores[report.truth_scores["record"].str.startswith("presentation=")]
    original = report.truth_scores[report.truth_scores["record"] == "original"].set_index("slide_id")
    assert (flipped.set_index("slide_id")["diagnostic_region"] != original.loc[flipped["slide_id"], "diagnostic_region"]).all()
    written = write_figures(explanation, cohort, None, out / "figures", [cohort.slides["slide_id"][0]], truth)
    assert len(written) == 2 and all(p.stat().st_size > 10_000 for p in written)
    with pytest.raises(KeyError, match="no image 'I9999' in the cohort"):
        load_sample(cohort, "I9999", None, ImageInput())


def test_a_run_explains_only_the_kind_of_cohort_it_was_trained_on(image_runs, tiny_cohort):
    from persam_lib.explain.attention import explain_run

    _, out = image_runs
    with pytest.raises(ValueError, match="was trained on images but .* is a cohort of slides"):
        explain_run(Run(out / "persam"), tiny_cohort, None, progress=False)


def test_integrated_gradients_and_shap_on_images(image_runs):
    from persam_lib.explain.attributions import attribute_run, integrated_gradients
    from persam_lib.train.data import load_sample

    cohort, out = image_runs
    run = Run(out / "mma_mgmu")
    loaded = run.model_for_fold(0)
    slide_id = cohort.slides["slide_id"][0]
    bag = load_sample(cohort, slide_id, None, ImageInput.of(loaded.config))
    record = cohort.records().loc[cohort.slides["patient_id"][0]]
    torch.manual_seed(0)
    result = integrated_gradients(loaded, bag, record, cohort.records(), steps=16)
    assert result.patches.shape == (16,) and result.fields.shape == (len(cohort.schema.fields),)
    total = result.patches.sum() + result.fields.sum()
    assert total == pytest.approx(result.logit_change, abs=0.01 * abs(result.logit_change) + 1e-4)
    attributions = attribute_run(run, cohort, None, slides=[slide_id], background_size=4, progress=False)
    assert len(attributions.shap) == 1 and set(cohort.schema.names) <= set(attributions.shap.columns)


def test_cli_trains_and_explains_an_image_cohort_without_features(radiographs, tmp_path, capsys):
    manifest = radiographs / "manifest.yaml"
    settings = [arg for k, v in SMALL_MODEL.items() if k not in ("n_folds", "epochs", "n_heads", "n_layers") for arg in ("--set", f"{k}={v}")]  # settings neither the CNN nor TransMIL reads would be refused
    assert main(["train", str(manifest), "--model", "cnn", "--out", str(tmp_path / "cnn"), "--folds", "2", "--epochs", "1", *settings]) == 0
    assert main(["explain", str(tmp_path / "cnn"), "--manifest", str(manifest), "--out", str(tmp_path / "a.csv"), "--metrics", str(tmp_path / "m.json")]) == 0
    assert pd.read_csv(tmp_path / "a.csv")["size"].eq(32).all()
    assert Run(tmp_path / "cnn").config.lr == 1e-3  # images start from their own defaults (TrainConfig.for_modality)
    assert main(["train", str(manifest), "--model", "transmil", "--out", str(tmp_path / "t"), "--folds", "2", "--epochs", "1", *settings]) == 0  # bag models run on the patch grid too
    assert main(["compare", str(manifest), "--models", "cnn,abmil_typo", "--out", str(tmp_path / "c")]) == 2
    assert "Unknown model(s) ['abmil_typo']. Models for images:" in capsys.readouterr().err


def test_image_template_manifest_is_valid_but_for_the_images_it_awaits():
    from persam_lib.cohort.manifest import validate_manifest

    template = Path(__file__).resolve().parents[1] / "data_manifests" / "template-images" / "manifest.yaml"
    problems = validate_manifest(template)
    assert len(problems) == 2 and all(p.field == "path" and "does not exist" in p.problem for p in problems)
    cohort = load_manifest(template, check_files=False)
    assert cohort.modality == "images" and cohort.slides["window_width"].isna().tolist() == [True, False]


def test_augmentation_flips_and_shifts_each_image_reproducibly():
    from persam_lib.train.augment import augment_images

    images = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    a = augment_images(images, torch.Generator().manual_seed(0))
    b = augment_images(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    for i in range(2):
        found = False
        for source in (images[i], images[i].flip(-1)):
            padded = torch.nn.functional.pad(source, (2, 2, 2, 2))
            for dy in range(5):
                for dx in range(5):
                    if torch.equal(padded[:, dy : dy + 32, dx : dx + 32], a[i]):
                        found = True
        assert found, i  # every output is its image, maybe flipped, shifted by at most 2 pixels (1/16 of 32)
    many = augment_images(images.repeat(16, 1, 1, 1), torch.Generator().manual_seed(1))
    assert not torch.equal(many[0], many[2])  # draws differ between images
    filled = augment_images(torch.zeros(32, 1, 32, 32), torch.Generator().manual_seed(2), fill=torch.tensor([-7.0]))
    assert set(filled.unique().tolist()) == {-7.0, 0.0}  # the uncovered border takes the fill (a black pixel), not 0
