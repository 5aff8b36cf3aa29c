"""Slide readers behind one small interface.

`open_slide(path)` returns an `OpenSlideReader` (every format OpenSlide reads);
`InMemorySlideReader` wraps a numpy array so tests and examples need no slide files.
All coordinates are level-0 pixels of a region's top-left corner.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


def thumbnail_level(level_downsamples: tuple[float, ...], min_downsample: float) -> int:
    """The finest stored level whose downsample is at least ``min_downsample`` (else the coarsest)."""
    return next((i for i, d in enumerate(level_downsamples) if d >= min_downsample * 0.999), len(level_downsamples) - 1)


def read_level(reader: "SlideReader", level: int) -> tuple[np.ndarray, float]:
    """A whole pyramid level as RGB, and its downsample."""
    w, h = reader.level_dimensions[level]
    return reader.read_region((0, 0), level, (w, h)), reader.level_downsamples[level]


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


@dataclass
class OpenSlideReader:
    """A slide read through OpenSlide. Transparent (background) pixels come back white."""

    path: str
    mpp_override: float | None = None

    def __post_init__(self) -> None:
        import openslide

        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as err:
            raise SlideError(f"{self.path}: not a slide format OpenSlide can read ({err}). Convert it to a tiled pyramidal TIFF or SVS.") from err
        except openslide.OpenSlideError as err:
            raise SlideError(f"{self.path}: OpenSlide could not open it ({err}); the file may be truncated or corrupt. Re-copy or re-export it.") from err
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = self._resolve_mpp()

    def _resolve_mpp(self) -> float:
        if self.mpp_override is not None and np.isfinite(self.mpp_override):
            return float(self.mpp_override)
        props = self._slide.properties
        value = props.get("openslide.mpp-x")
        if value is None:
            raise SlideError(
                f"{self.path}: the slide has no microns-per-pixel metadata (openslide.mpp-x). Add an `mpp` column to the slide table with its level-0 resolution (0.25 at 40x, 0.5 at 20x)."
            )
        mpp = float(value)
        if not 0.05 <= mpp <= 20:
            raise SlideError(f"{self.path}: mpp {mpp} in the slide's metadata is implausible. Give the right value in the slide table's `mpp` column.")
        return mpp

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            rgba = np.asarray(self._slide.read_region((int(level0_xy[0]), int(level0_xy[1])), level, (int(size[0]), int(size[1]))))
        except Exception as err:  # openslide raises OpenSlideError; corrupt tiles raise others
            raise SlideError(f"{self.path}: could not read region at {level0_xy} level {level} ({err}); the file may be corrupt.") from err
        return _rgba_to_rgb_on_white(rgba)

    def thumbnail(self, min_downsample: float) -> tuple[np.ndarray, float]:
        return read_level(self, thumbnail_level(self.level_downsamples, min_downsample))

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> "OpenSlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class InMemorySlideReader:
    """A slide held as a level-0 numpy array; pyramid levels are made by block averaging."""

    image: np.ndarray
    mpp: float = 0.5
    downsamples: tuple[int, ...] = (1, 4, 16)
    path: str = "<in-memory>"

    def __post_init__(self) -> None:
        from persam_lib.slides.tiff_writer import _downsample

        self._levels = [self.image if d == 1 else _downsample(self.image, d) for d in self.downsamples]
        self.level_dimensions = tuple((lv.shape[1], lv.shape[0]) for lv in self._levels)
        self.level_downsamples = tuple(float(d) for d in self.downsamples)

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.downsamples[level]
        x, y = int(level0_xy[0]) // ds, int(level0_xy[1]) // ds
        w, h = size
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        src = self._levels[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, src.shape[1]), min(y + h, src.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = src[y0:y1, x0:x1]
        return out

    def thumbnail(self, min_downsample: float) -> tuple[np.ndarray, float]:
        level = thumbnail_level(self.level_downsamples, min_downsample)
        return self._levels[level], self.level_downsamples[level]

    def close(self) -> None:
        pass

    def __enter__(self) -> "InMemorySlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_slide(path: str | Path, *, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a slide file with the fastest reader that can read it.

    ``backend="auto"`` picks the tiled-TIFF fast path (stored JPEG tiles decoded once) for
    generic tiled TIFF and SVS files, and OpenSlide for everything else; ``"openslide"`` forces
    OpenSlide. ``mpp`` overrides the slide's own resolution metadata when given.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: the slide file does not exist. Check the path in the slide table.")
    if backend not in ("auto", "openslide", "tiled-tiff"):
        raise ValueError(f"backend must be 'auto', 'openslide' or 'tiled-tiff', got '{backend}'")
    if backend != "openslide":
        from persam_lib.slides.tiled_tiff import TIFF_SUFFIXES, FastPathUnsupported, TiledTiffReader

        if backend == "tiled-tiff":
            return TiledTiffReader(str(path), mpp_override=mpp)
        if path.suffix.lower() in TIFF_SUFFIXES:
            try:  # one open decides: no separate probe of the file first
                return TiledTiffReader(str(path), mpp_override=mpp)
            except FastPathUnsupported:
                pass
    return OpenSlideReader(str(path), mpp_override=mpp)


def _rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
