"""A fast reader for tiled TIFF-family slides (generic tiled TIFF, Aperio SVS).

OpenSlide's ``read_region`` re-decodes every stored tile a region touches, for every region.
This reader decodes each stored JPEG tile once (tifffile + libjpeg-turbo through imagecodecs;
decoding releases the GIL, so threads scale), keeps decoded tiles in a small LRU cache, and cuts
patches from them. Pyramid geometry and resolution come from OpenSlide (through `base`, the only
slides module it imports), so both readers agree on levels and microns per pixel, and tests check
that they return identical pixels.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import tifffile

from persam_lib.slides.base import SlideError, open_openslide, read_level, resolve_mpp, thumbnail_level

TIFF_SUFFIXES = (".tif", ".tiff", ".svs")


class FastPathUnsupported(SlideError):
    """The file is not a tiled, 3-channel JPEG TIFF pyramid: read it with OpenSlide instead."""


@dataclass
class TiledTiffReader:
    """Reads a tiled, JPEG-compressed TIFF pyramid by decoding stored tiles once."""

    path: str
    mpp_override: float | None = None
    cache_tiles: int = 256
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, OSError) as err:
            raise FastPathUnsupported(f"{self.path}: not a readable TIFF ({err}).") from err
        try:
            reference = open_openslide(self.path)
            try:
                self.level_dimensions = tuple(reference.level_dimensions)
                self.level_downsamples = tuple(float(d) for d in reference.level_downsamples)
                self.mpp = resolve_mpp(self.path, reference.properties, self.mpp_override)
            finally:
                reference.close()
            self._pages = [self._page_for(dims) for dims in self.level_dimensions]
        except BaseException:
            self._tif.close()
            raise
        self._fd = os.open(self.path, os.O_RDONLY)  # tiles are read with pread: no shared file position

    def _page_for(self, dims: tuple[int, int]) -> tifffile.TiffPage:
        for page in self._tif.pages:
            if (page.imagewidth, page.imagelength) == tuple(dims) and page.is_tiled:
                if page.compression != tifffile.COMPRESSION.JPEG or page.samplesperpixel != 3:
                    raise FastPathUnsupported(f"{self.path}: level {dims} is not 3-channel JPEG; use the OpenSlide reader")
                return page
        raise FastPathUnsupported(f"{self.path}: no tiled TIFF page of size {dims}; use the OpenSlide reader")

    def _tile(self, level: int, row: int, col: int) -> np.ndarray:
        key = (level, row, col)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        page = self._pages[level]
        across = -(-page.imagewidth // page.tilewidth)
        index = row * across + col
        data = os.pread(self._fd, page.databytecounts[index], page.dataoffsets[index])
        try:
            decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as err:  # imagecodecs raises its own error types for corrupt tiles
            raise SlideError(f"{self.path}: tile {index} of level {level} could not be decoded ({err}); the file may be corrupt.") from err
        tile = np.asarray(decoded).reshape(page.tilelength, page.tilewidth, -1)[..., :3]
        self._cache[key] = tile
        if len(self._cache) > self.cache_tiles:
            self._cache.popitem(last=False)
        return tile

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB (h, w, 3) uint8; pixels outside the slide are white, as with OpenSlide."""
        page = self._pages[level]
        ds = self.level_downsamples[level]
        x, y = int(level0_xy[0] / ds), int(level0_xy[1] / ds)
        w, h = int(size[0]), int(size[1])
        tw, th = page.tilewidth, page.tilelength
        if x % tw == 0 and y % th == 0 and (w, h) == (tw, th) and x >= 0 and y >= 0 and x + w <= page.imagewidth and y + h <= page.imagelength:
            return self._tile(level, y // th, x // tw).copy()  # the region is exactly one stored tile
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, page.imagewidth), min(y + h, page.imagelength)
        for row in range(y0 // th, (y1 - 1) // th + 1 if y1 > y0 else 0):
            for col in range(x0 // tw, (x1 - 1) // tw + 1 if x1 > x0 else 0):
                tile = self._tile(level, row, col)
                tx0, ty0 = col * tw, row * th
                sx0, sy0 = max(x0, tx0), max(y0, ty0)
                sx1, sy1 = min(x1, tx0 + tw), min(y1, ty0 + th)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
        return out

    def thumbnail(self, min_downsample: float) -> tuple[np.ndarray, float]:
        return read_level(self, thumbnail_level(self.level_downsamples, min_downsample))

    def close(self) -> None:
        self._tif.close()
        self._cache.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "TiledTiffReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

