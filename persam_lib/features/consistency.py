"""Features are used only when they match: one check for a folder before training or explaining,
and one for a rerun of `persam extract` into a folder that already holds features.

`check_feature_folder` reads every slide's file once — training needs the features anyway, so it
hands them back — and refuses a folder whose files disagree in feature dimension or settings
(naming two of the files and the setting), and a file with a NaN or infinite value (naming the
slide and the row). `check_rerun` compares an extraction's settings with those recorded in the
files already in its output folder, reading only their attributes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from persam_lib.features.settings import OPTIONS, UNRECORDED, describe, recorded_settings, setting_differences, shown
from persam_lib.features.store import FeatureFileError, SlideFeatures, feature_path, is_complete, non_finite_problem, read_extraction, read_features


class FeatureMismatchError(FeatureFileError):
    """Feature files that cannot be used together (different dimension or settings), or one that
    holds a NaN or infinite value. A ValueError: the CLI reports it as exit 2."""


@dataclass
class FeatureFolderInfo:
    """What `check_feature_folder` found: the shared feature dimension and settings, and every
    slide's features, already read (by slide id, in the order asked for)."""

    folder: Path
    dim: int
    settings: dict[str, Any]
    features: dict[str, SlideFeatures] = field(default_factory=dict)


def check_feature_folder(features_dir: str | Path, slide_ids: Iterable[str]) -> FeatureFolderInfo:
    """Read the feature file of every slide in ``slide_ids`` from ``features_dir`` and prove they
    can be used together; return them with their shared dimension and settings.

    Raises `FileNotFoundError` for a slide without a file (run `persam extract`), and
    `FeatureMismatchError` when a file holds a NaN/Inf value (the slide and row are named) or two
    files differ in feature dimension or in a setting (both files and the setting are named).
    """
    folder = Path(features_dir)
    slide_ids = list(slide_ids)
    if not slide_ids:
        raise ValueError(f"{folder}: no slides to check; the cohort lists none.")
    loaded: dict[str, SlideFeatures] = {}
    first: tuple[Path, SlideFeatures, dict[str, Any]] | None = None
    for slide_id in slide_ids:
        path = feature_path(folder, slide_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no features for slide '{slide_id}'. Run `persam extract` first (see failures.csv there if it failed).")
        data = read_features(path, check_finite=False)
        problem = non_finite_problem(data, path)
        if problem:
            raise FeatureMismatchError(problem)
        settings = recorded_settings(data)
        if first is None:
            first = (path, data, settings)
        else:
            _compare(first, (path, data, settings))
        loaded[slide_id] = data
    assert first is not None
    return FeatureFolderInfo(folder, int(first[1].features.shape[1]), first[2], loaded)


def _compare(first: tuple[Path, SlideFeatures, dict[str, Any]], other: tuple[Path, SlideFeatures, dict[str, Any]]) -> None:
    (path_a, data_a, settings_a), (path_b, data_b, settings_b) = first, other
    dim_a, dim_b = data_a.features.shape[1], data_b.features.shape[1]
    if dim_a != dim_b:
        raise FeatureMismatchError(
            f"{path_a.parent}: the feature files disagree in feature dimension: {path_a.name} has {dim_a}, {path_b.name} has {dim_b}. "
            "All slides need features of one encoder; re-extract the folder with one setting (`persam extract ... --overwrite`)."
        )
    differences = setting_differences(settings_a, settings_b)
    if differences:
        raise FeatureMismatchError(f"{path_a.parent}: {_mismatch(differences, path_a.name, path_b.name)}")


def _mismatch(differences: list[tuple[str, Any, Any]], first: str, second: str) -> str:
    sources = {name: (a, b) for name, a, b in differences if name == "source"}
    if "source" in sources and UNRECORDED in sources["source"]:
        recorded, unrecorded = (first, second) if sources["source"][1] == UNRECORDED else (second, first)
        return (
            f"{unrecorded} was written without a record of its extraction settings (by an older persam or another tool), "
            f"{recorded} with one, so they cannot be proved to match. Re-extract the folder (`persam extract ... --overwrite`) or re-import it."
        )
    return (
        f"the feature files were extracted with different settings: {describe(differences, first, second)}. "
        "Features made with different settings cannot be used together; re-extract the folder with one setting (`persam extract ... --overwrite`)."
    )


def check_rerun(out_dir: str | Path, slide_ids: Iterable[str], settings: dict[str, Any], *, overwrite: bool = False) -> list[str]:
    """Compare ``settings`` with those recorded in the complete feature files of ``slide_ids``
    already in ``out_dir``; return the slides whose files differ.

    Without ``overwrite`` a difference is a `FeatureMismatchError` that names the file, each
    setting that differs (and its option) and what to do — finishing the folder with other
    settings would mix them. With ``overwrite`` the caller redoes those slides.
    """
    out_dir = Path(out_dir)
    differing: list[str] = []
    for slide_id in slide_ids:
        path = feature_path(out_dir, slide_id)
        if not is_complete(path):
            continue
        record = read_extraction(path)
        differences = setting_differences(record if record is not None else {"source": UNRECORDED}, settings)
        if not differences:
            continue
        if not overwrite:
            if record is None:
                detail = f"{path.name} was written without a record of its extraction settings (by an older persam or another tool)"
            else:
                detail = "the features there were made with other settings: " + "; ".join(
                    f"{name} is {shown(name, old)} in {path.name} but {shown(name, new)} in this run" + (f" ({OPTIONS[name]})" if name in OPTIONS else "")
                    for name, old, new in differences
                )
            raise FeatureMismatchError(
                f"{out_dir}: {detail}. Finishing the folder with this run would mix features made differently. "
                "Run with the folder's settings, choose another --out folder, or pass --overwrite to redo every slide with this run's settings."
            )
        differing.append(slide_id)
    return differing
