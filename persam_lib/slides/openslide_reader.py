"""The OpenSlide backend: every format OpenSlide reads (SVS, NDPI, MRXS, generic tiled TIFF, ...)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persam_lib.slides.base import SlideError, open_openslide, read_level, resolve_mpp, rgba_to_rgb_on_white, thumbnail_level


@dataclass
class OpenSlideReader:
    """A slide read through OpenSlide. Transparent (background) pixels come back white."""

    path: str
    mpp_override: float | None = None

    def __post_init__(self) -> None:
        self._slide = open_openslide(self.path)
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = resolve_mpp(self.path, self._slide.properties, self.mpp_override)

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            rgba = np.asarray(self._slide.read_region((int(level0_xy[0]), int(level0_xy[1])), level, (int(size[0]), int(size[1]))))
        except Exception as err:  # openslide raises OpenSlideError; corrupt tiles raise others
            raise SlideError(f"{self.path}: could not read region at {level0_xy} level {level} ({err}); the file may be corrupt.") from err
        return rgba_to_rgb_on_white(rgba)

    def thumbnail(self, min_downsample: float) -> tuple[np.ndarray, float]:
        return read_level(self, thumbnail_level(self.level_downsamples, min_downsample))

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> "OpenSlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
