"""Per-slide HDF5 feature files in the CLAM/TRIDENT convention.

Each file holds ``features`` [N, D] float32 and ``coords`` [N, 2] int64 (level-0 top-left
pixels). ``coords`` carries CLAM's attrs ``patch_size`` (pixels of the encoded patch),
``patch_level`` and ``downsample`` (the pyramid level read and its downsample), plus
``patch_size_level0`` (TRIDENT's name: the patch's side in level-0 pixels) and ``mpp`` (the
encoded patch's resolution); the file carries ``encoder`` and ``slide_id``. Files are written to
a temporary name and renamed, so a file under its final name is always complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from persam_lib.io.atomic import atomic_path


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

    def __post_init__(self) -> None:
        if not self.patch_size_level0:
            self.patch_size_level0 = self.patch_size
        if self.features.ndim != 2 or self.coords.shape != (len(self.features), 2):
            raise ValueError(f"slide {self.slide_id}: features {self.features.shape} and coords {self.coords.shape} do not match")


def feature_path(features_dir: str | Path, slide_id: str) -> Path:
    """Where the feature file of ``slide_id`` lives in ``features_dir``."""
    return Path(features_dir) / f"{slide_id}.h5"


def write_features(path: str | Path, data: SlideFeatures) -> Path:
    """Write a feature file atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["slide_id"] = data.slide_id
        f.attrs["encoder"] = data.encoder
        f.create_dataset("features", data=data.features.astype(np.float32))
        coords = f.create_dataset("coords", data=data.coords.astype(np.int64))
        coords.attrs["patch_size"] = int(data.patch_size)
        coords.attrs["patch_level"] = int(data.patch_level)
        coords.attrs["downsample"] = float(data.downsample)
        coords.attrs["mpp"] = float(data.mpp)
        coords.attrs["patch_size_level0"] = int(data.patch_size_level0)
    return path


def read_features(path: str | Path) -> SlideFeatures:
    """Read a feature file written by this library, CLAM or TRIDENT."""
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
            return SlideFeatures(
                slide_id=str(f.attrs.get("slide_id", path.stem)),
                features=features,
                coords=coords,
                patch_size=patch_size,
                patch_level=int(attrs.get("patch_level", 0)),
                downsample=float(downsample),
                patch_size_level0=level0,
                mpp=float(attrs.get("mpp", float("nan"))),
                encoder=str(f.attrs.get("encoder", "unknown")),
            )
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 feature file ({err}). Delete it and re-run `persam extract`.") from err


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
