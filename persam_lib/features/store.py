"""Per-slide HDF5 feature files in the CLAM/TRIDENT convention.

Each file holds ``features`` [N, D] float32 and ``coords`` [N, 2] int64 (level-0 top-left
pixels). ``coords`` carries CLAM's attrs ``patch_size`` (pixels of the encoded patch),
``patch_level`` and ``downsample`` (the pyramid level read and its downsample), plus
``patch_size_level0`` (TRIDENT's name: the patch's side in level-0 pixels) and ``mpp`` (the
encoded patch's resolution); the file carries ``encoder`` and ``slide_id``, and ``extraction``:
a JSON string recording how the features were made (encoder and a hash of its weights, patch
size, mpp, stride, tissue settings, library version; see `persam_lib.features.settings`), so
features made with different settings are never used together. Files are written to a
temporary name and renamed, so a file under its final name is always complete.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from persam_lib.io.atomic import atomic_path, dumps_strict
from persam_lib.io.paths import UnsafePathError

EXTRACTION_ATTR = "extraction"


class FeatureFileError(ValueError):
    """A feature file cannot be used: unreadable, malformed, or holding non-finite values."""


@dataclass
class SlideFeatures:
    """The features of one slide, read from or written to a feature file."""

    slide_id: str
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64, level-0 top-left [x, y]
    patch_size: int  # pixels of the encoded patch (at `mpp`)
    patch_level: int = 0
    downsample: float = 1.0
    mpp: float = float("nan")
    encoder: str = "unknown"
    patch_size_level0: int = 0  # side in level-0 pixels; 0 = same as patch_size
    extraction: dict | None = None  # the settings record (None: a file written without one)

    def __post_init__(self) -> None:
        if not self.patch_size_level0:
            self.patch_size_level0 = self.patch_size
        if self.features.ndim != 2 or self.coords.shape != (len(self.features), 2):
            raise ValueError(f"slide {self.slide_id}: features {self.features.shape} and coords {self.coords.shape} do not match")


def feature_path(features_dir: str | Path, slide_id: str) -> Path:
    """Where the feature file of ``slide_id`` lives in ``features_dir`` (refused, with
    `~persam_lib.io.paths.UnsafePathError`, when the id would lead outside the folder)."""
    return Path(features_dir) / slide_file_name(slide_id, ".h5")


def slide_file_name(slide_id: str, suffix: str) -> str:
    """``<slide_id><suffix>``, refused when the id is not one plain file name (a separator, ``..``,
    an empty id): a second line of defence behind the manifest's id check. A symbolic link of
    that name is fine — writers replace the link itself, never the file it points to."""
    slide_id = str(slide_id)
    if not slide_id or slide_id in (".", "..") or any(c in slide_id for c in "/\\\0"):
        raise UnsafePathError(f"slide id {slide_id!r}: not a plain file name, so its files would land outside their folder; refusing to use it. Rename the slide (letters, digits, '.', '_' and '-').")
    return f"{slide_id}{suffix}"


def write_features(path: str | Path, data: SlideFeatures) -> Path:
    """Write a feature file atomically (temporary file + rename).

    The HDF5 file is built in memory and then written with plain file I/O: HDF5 itself never
    meets a full disk (where a failed flush leaves the library unable to close the file, and a
    later call crashes the process). A full disk is then an ordinary `OSError` (``ENOSPC``, the
    file named) and the temporary file is removed, so nothing half-written remains under any name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        f.attrs["slide_id"] = data.slide_id
        f.attrs["encoder"] = data.encoder
        if data.extraction is not None:
            f.attrs[EXTRACTION_ATTR] = dumps_strict(data.extraction, sort_keys=True)
        f.create_dataset("features", data=data.features.astype(np.float32))
        coords = f.create_dataset("coords", data=data.coords.astype(np.int64))
        coords.attrs["patch_size"] = int(data.patch_size)
        coords.attrs["patch_level"] = int(data.patch_level)
        coords.attrs["downsample"] = float(data.downsample)
        coords.attrs["mpp"] = float(data.mpp)
        coords.attrs["patch_size_level0"] = int(data.patch_size_level0)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                handle.write(image.getbuffer())
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from err
    return path


def read_features(path: str | Path, *, check_finite: bool = True) -> SlideFeatures:
    """Read a feature file written by this library, CLAM or TRIDENT.

    With ``check_finite`` a NaN or infinite feature value is a `FeatureFileError` naming the
    file, the slide and the row (patch index): a model fed one would only say "Input contains NaN".
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise ValueError(f"{path}: a feature file needs datasets 'features' and 'coords', found {list(f.keys())}")
            features = np.asarray(f["features"], dtype=np.float32)
            if features.ndim == 3 and features.shape[0] == 1:  # some tools store [1, N, D]
                features = features[0]
            coords = np.asarray(f["coords"]).astype(np.int64)
            attrs = dict(f["coords"].attrs)
            downsample = np.atleast_1d(np.asarray(attrs.get("downsample", 1.0), dtype=float))[0]  # CLAM stores (dx, dy)
            patch_size = int(attrs.get("patch_size", 256))
            level0 = int(attrs.get("patch_size_level0", 0)) or int(round(patch_size * downsample))
            data = SlideFeatures(
                slide_id=str(f.attrs.get("slide_id", path.stem)),
                features=features,
                coords=coords,
                patch_size=patch_size,
                patch_level=int(attrs.get("patch_level", 0)),
                downsample=float(downsample),
                patch_size_level0=level0,
                mpp=float(attrs.get("mpp", float("nan"))),
                encoder=str(f.attrs.get("encoder", "unknown")),
                extraction=_extraction_attr(f, path),
            )
    except OSError as err:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({err}). Delete it and re-run `persam extract`.") from err
    if check_finite:
        problem = non_finite_problem(data, path)
        if problem:
            raise FeatureFileError(problem)
    return data


def read_extraction(path: str | Path) -> dict | None:
    """The settings record of a feature file (None when it has none), without reading its features."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            return _extraction_attr(f, path)
    except OSError as err:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({err}). Delete it and re-run `persam extract`.") from err


def _extraction_attr(f: h5py.File, path: Path) -> dict | None:
    text = f.attrs.get(EXTRACTION_ATTR)
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        record = json.loads(str(text))
    except json.JSONDecodeError as err:
        raise FeatureFileError(f"{path}: the '{EXTRACTION_ATTR}' attribute is not valid JSON ({err.msg}). Delete the file and re-run `persam extract`.") from None
    if not isinstance(record, dict):
        raise FeatureFileError(f"{path}: the '{EXTRACTION_ATTR}' attribute must be a JSON object of settings. Got {type(record).__name__} instead. Delete the file and re-run `persam extract`.")
    return record


def non_finite_problem(data: SlideFeatures, path: str | Path) -> str | None:
    """Why ``data`` cannot be trained on because of a NaN or infinite value (None when all are
    finite): the file, the slide, the first bad row (patch index) with its coordinates, and the count."""
    finite = np.isfinite(data.features)
    if finite.all():
        return None
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    row = int(bad_rows[0])
    column = int(np.flatnonzero(~finite[row])[0])
    value = data.features[row, column]
    x, y = (int(v) for v in data.coords[row])
    more = f" ({len(bad_rows)} rows in all)" if len(bad_rows) > 1 else ""
    return (
        f"{path}: slide '{data.slide_id}' has a non-finite feature value ({value}) in row {row} "
        f"(patch at level-0 x={x}, y={y}), column {column}{more}. Delete the file and run `persam extract` again "
        "to re-create it, or fix the tool that wrote it."
    )


def is_complete(path: str | Path) -> bool:
    """True when a feature file exists under its final name and opens with both datasets."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return "features" in f and "coords" in f and f["features"].shape[0] == f["coords"].shape[0]
    except OSError:
        return False
