"""`open_slide(path)`: the one place that picks a backend for a slide file.

It sits above every backend (`openslide_reader`, `tiled_tiff`; `memory` is built directly), as
tiatoolbox's ``WSIReader.open`` does, so no backend imports it back.
"""
from __future__ import annotations

from pathlib import Path

from persam_lib.slides.base import SlideError, SlideReader
from persam_lib.slides.openslide_reader import OpenSlideReader
from persam_lib.slides.tiled_tiff import TIFF_SUFFIXES, FastPathUnsupported, TiledTiffReader

BACKENDS = ("auto", "openslide", "tiled-tiff")


def open_slide(path: str | Path, *, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a slide file with the fastest reader that can read it.

    ``backend="auto"`` picks the tiled-TIFF fast path (stored JPEG tiles decoded once) for
    generic tiled TIFF and SVS files, and OpenSlide for everything else; ``"openslide"`` forces
    OpenSlide. ``mpp`` overrides the slide's own resolution metadata when given.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: the slide file does not exist. Check the path in the slide table.")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'openslide' or 'tiled-tiff', got '{backend}'")
    if backend == "tiled-tiff":
        return TiledTiffReader(str(path), mpp_override=mpp)
    if backend == "auto" and path.suffix.lower() in TIFF_SUFFIXES:
        try:  # one open decides: no separate probe of the file first
            return TiledTiffReader(str(path), mpp_override=mpp)
        except FastPathUnsupported:
            pass
    return OpenSlideReader(str(path), mpp_override=mpp)
