"""Export for review: QuPath GeoJSON tiles and pyramidal TIFF overlays that OpenSlide opens."""
import json

import numpy as np
import openslide
import pytest

from persam_lib.cli import main
from persam_lib.explain.export import record_file_name


def _slide(tiny_cohort, k=0):
    row = tiny_cohort.slides.iloc[k]
    with openslide.OpenSlide(row["path"]) as slide:
        return row["slide_id"], slide.dimensions, float(slide.properties["openslide.mpp-x"])


def test_geojson_is_a_feature_collection_of_tiles_inside_the_slide(tiny_run, tiny_cohort, tiny_features, tmp_path):
    slide_id, (width, height), _ = _slide(tiny_cohort)
    out = tmp_path / "qupath"
    assert main(["export", str(tiny_run.path), "--manifest", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--slides", slide_id, "--format", "geojson", "--out", str(out)]) == 0
    data = json.loads((out / f"{slide_id}.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) > 0
    n_records = None
    for feature in data["features"]:
        assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["objectType"] == "tile"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert ring[:, 0].min() >= 0 and ring[:, 1].min() >= 0 and ring[:, 0].max() <= width and ring[:, 1].max() <= height
        measurements = feature["properties"]["measurements"]
        assert "attention: original" in measurements and any(k.startswith("attention: site=") for k in measurements)
        n_records = n_records or len(measurements)
        assert len(measurements) == n_records
    total = sum(f["properties"]["measurements"]["attention: original"] for f in data["features"])
    assert total == pytest.approx(1.0, abs=1e-4)  # the map over the slide's patches


def test_tiff_overlays_open_in_openslide_with_the_slides_size_and_mpp(tiny_run, tiny_cohort, tiny_features, tmp_path):
    slide_id, dimensions, mpp = _slide(tiny_cohort, 1)
    out = tmp_path / "overlays"
    assert main(["export", str(tiny_run.path), "--manifest", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--slides", slide_id, "--format", "tiff", "--out", str(out), "--pseudonyms"]) == 0
    files = sorted((out / "S0002").glob("*.tiff"))
    assert (out / "S0002" / "original.tiff") in files and any(f.name.startswith("site-") for f in files)
    with openslide.OpenSlide(out / "S0002" / "original.tiff") as overlay:
        assert overlay.dimensions == dimensions and overlay.level_count >= 2
        assert float(overlay.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-3)
        pixels = np.asarray(overlay.read_region((0, 0), overlay.level_count - 1, overlay.level_dimensions[-1]).convert("RGB"))
    assert (pixels != 255).any() and (pixels == 255).all(-1).any()  # attention on the patches, white off them


def test_record_labels_become_safe_file_names_and_bad_slides_are_named(tiny_run, tiny_cohort, tmp_path, capsys):
    assert record_file_name("site=extranodal;age=40.5") == "site-extranodal_age-40.5" and record_file_name("original") == "original"
    assert record_file_name("../../x") == "..-..-x"
    assert main(["export", str(tiny_run.path), "--manifest", str(tiny_cohort.manifest_path), "--slides", "NOPE", "--out", str(tmp_path / "o")]) == 2
    assert "NOPE" in capsys.readouterr().err
