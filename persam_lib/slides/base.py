"""What every slide reader shares: the `SlideReader` protocol, `SlideError`, and the helpers backends use.

Each backend (`openslide_reader`, `tiled_tiff`, `memory`) imports only this module among the
slides modules, and `factory.open_slide` sits above them all, so nothing imports back up.
All coordinates are level-0 pixels of a region's top-left corner.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import openslide


class SlideError(RuntimeError):
    """A slide could not be opened or read; the message names the file and what to do."""


class SlideReader(Protocol):
    """What the pipeline needs from a slide."""

    path: str
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: float  # microns per pixel at level 0

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` (w, h) pixels at ``level``, top-left at level-0 ``level0_xy``."""
        ...

    def thumbnail(self, min_downsample: float) -> tuple[np.ndarray, float]:
        """The smallest stored level at least ``min_downsample`` (or the coarsest), and its downsample."""
        ...

    def close(self) -> None: ...


def thumbnail_level(level_downsamples: tuple[float, ...], min_downsample: float) -> int:
    """The finest stored level whose downsample is at least ``min_downsample`` (else the coarsest)."""
    return next((i for i, d in enumerate(level_downsamples) if d >= min_downsample * 0.999), len(level_downsamples) - 1)


def read_level(reader: SlideReader, level: int) -> tuple[np.ndarray, float]:
    """A whole pyramid level as RGB, and its downsample."""
    w, h = reader.level_dimensions[level]
    return reader.read_region((0, 0), level, (w, h)), reader.level_downsamples[level]


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (h, w, 4) uint8 composited onto white: transparent (background) pixels come back white."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downsample by an integer factor (the mean of each factor x factor block).

    The one way pyramid levels are made, so a written TIFF and an in-memory slide agree.
    """
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return np.asarray(Image.fromarray(np.ascontiguousarray(image[:h, :w])).reduce(factor))


def open_openslide(path: str) -> "openslide.OpenSlide":
    """Open ``path`` with OpenSlide; its failures become a `SlideError` that says what to do.

    Shared by the OpenSlide backend and the tiled-TIFF backend (which takes pyramid geometry and
    resolution from OpenSlide so both readers agree).
    """
    import openslide

    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as err:
        raise SlideError(f"{path}: not a slide format OpenSlide can read ({err}). Convert it to a tiled pyramidal TIFF or SVS.") from err
    except openslide.OpenSlideError as err:
        raise SlideError(f"{path}: OpenSlide could not open it ({err}); the file may be truncated or corrupt. Re-copy or re-export it.") from err


def resolve_mpp(path: str, properties: Mapping[str, str], mpp_override: float | None) -> float:
    """Level-0 microns per pixel: ``mpp_override`` when finite, else the slide's ``openslide.mpp-x``.

    Missing or implausible metadata is a `SlideError` naming the slide table's `mpp` column as the fix.
    """
    if mpp_override is not None and np.isfinite(mpp_override):
        return float(mpp_override)
    value = properties.get("openslide.mpp-x")
    if value is None:
        raise SlideError(
            f"{path}: the slide has no microns-per-pixel metadata (openslide.mpp-x). Add an `mpp` column to the slide table with its level-0 resolution (0.25 at 40x, 0.5 at 20x)."
        )
    mpp = float(value)
    if not 0.05 <= mpp <= 20:
        raise SlideError(f"{path}: mpp {mpp} in the slide's metadata is implausible. Give the right value in the slide table's `mpp` column.")
    return mpp
