"""The in-memory backend: a numpy array as a slide, so tests and examples need no slide files."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persam_lib.slides.base import downsample, thumbnail_level


@dataclass
class InMemorySlideReader:
    """A slide held as a level-0 numpy array; pyramid levels are made by block averaging."""

    image: np.ndarray
    mpp: float = 0.5
    downsamples: tuple[int, ...] = (1, 4, 16)
    path: str = "<in-memory>"

    def __post_init__(self) -> None:
        self._levels = [self.image if d == 1 else downsample(self.image, d) for d in self.downsamples]
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
