"""Open every slide before anything long runs: `persam validate` calls `check_slides`.

A slide that cannot be read should be found in seconds by `validate`, not an hour into
`extract`. `check_slide` opens the file exactly as extraction does (`open_slide`, same backend
choice and ``mpp`` override), checks the pyramid's geometry and resolution are plausible, and
decodes a tile of every level — its centre and its last (bottom-right) tile, the one a truncated
copy loses first. A failure names the file, says what is wrong in words (a PNG under a slide's
name, a truncated copy, a compression OpenSlide cannot decode) and what to do.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from persam_lib.cohort.manifest import Cohort
from persam_lib.slides.base import SlideError, SlideReader
from persam_lib.slides.factory import open_slide

TILE = 256  # side of the region decoded per level (smaller when the level is smaller)
MAX_SIDE = 1_000_000  # pixels; no scanner writes a level this large
MAX_MM = 300.0  # physical side of level 0; a glass slide is 75 mm (whole-mount ones ~150 mm)
_REEXPORT = "Re-export it as a tiled pyramidal TIFF with JPEG compression (e.g. `vips tiffsave IN OUT.tiff --tile --pyramid --compression jpeg --Q 90`)."
_RECOPY = "Copy it again from the source (compare file sizes or checksums), or re-export it."
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"BM": "a BMP image", b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive"}


@dataclass(frozen=True)
class SlideProblem:
    """A slide of a cohort that cannot be read, and why (the reason starts with its file)."""

    slide_id: str
    patient_id: str
    path: str
    reason: str


def check_slide(path: str | Path, mpp: float | None = None, backend: str = "auto") -> str | None:
    """None when the slide at ``path`` opens and decodes as `persam extract` will read it;
    else one message: the file, what is wrong and what to do.

    ``mpp`` is the slide table's level-0 resolution (None: the slide's metadata, which must then
    be there and plausible); ``backend`` is extraction's ``reader_backend``.
    """
    path = str(path)
    try:
        reader = open_slide(path, mpp=mpp, backend=backend)
    except SlideError as err:
        return _open_failure(path, err)
    except Exception as err:  # a reader library's own error types
        return f"{path}: could not be opened ({type(err).__name__}: {err}). {_RECOPY}"
    try:
        return _geometry_problem(path, reader) or _decode_problem(path, reader)
    finally:
        reader.close()


def check_slides(cohort: Cohort, backend: str = "auto", workers: int | None = None) -> list[SlideProblem]:
    """Every slide of ``cohort`` that `check_slide` refuses, in table order (empty: all fine).
    Slides are opened in ``workers`` threads (default: up to 4), as slide I/O mostly waits."""
    rows = list(cohort.slides.itertuples())

    def one(row) -> str | None:
        mpp = getattr(row, "mpp", None)
        return check_slide(row.path, None if mpp is None or pd.isna(mpp) else float(mpp), backend)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(one, rows))
    return [SlideProblem(row.slide_id, str(row.patient_id), row.path, reason) for row, reason in zip(rows, reasons) if reason]


def _geometry_problem(path: str, reader: SlideReader) -> str | None:
    """Levels present, positive, no larger than level 0, and a plausible physical size."""
    dims, downsamples = reader.level_dimensions, reader.level_downsamples
    if not dims or len(dims) != len(downsamples):
        return f"{path}: the slide reports no pyramid levels. {_REEXPORT}"
    for level, ((w, h), ds) in enumerate(zip(dims, downsamples)):
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            return f"{path}: level {level} is {w} x {h} pixels, which is not a plausible slide level. {_REEXPORT}"
        if not (np.isfinite(ds) and ds >= 0.999) or w > dims[0][0] or h > dims[0][1]:
            return f"{path}: level {level} ({w} x {h}, downsample {ds:g}) is larger than level 0 {dims[0]}; the pyramid is inconsistent. {_REEXPORT}"
    width_mm, height_mm = dims[0][0] * reader.mpp / 1000, dims[0][1] * reader.mpp / 1000
    if max(width_mm, height_mm) > MAX_MM:
        return (f"{path}: at {reader.mpp:g} microns per pixel the slide would be {width_mm:.0f} x {height_mm:.0f} mm, larger than any glass slide; "
                "the resolution is wrong. Give the level-0 microns per pixel in the slide table's `mpp` column (0.25 at 40x, 0.5 at 20x).")
    return None


def _decode_problem(path: str, reader: SlideReader) -> str | None:
    """Decode the centre and the last (bottom-right) region of every level."""
    for level, (w, h) in enumerate(reader.level_dimensions):
        ds = reader.level_downsamples[level]
        tw, th = min(TILE, w), min(TILE, h)
        for where, (x, y) in (("centre", ((w - tw) // 2, (h - th) // 2)), ("last tile", (w - tw, h - th))):
            try:
                region = reader.read_region((int(x * ds), int(y * ds)), level, (tw, th))
            except Exception as err:  # SlideError, or a decoder's own error type
                cause = err.__cause__ if isinstance(err, SlideError) and err.__cause__ is not None else err
                return f"{path}: level {level} ({w} x {h}) could not be decoded at its {where} ({cause}); the file is corrupt or incomplete. {_RECOPY}"
            if region.shape != (th, tw, 3) or region.dtype != np.uint8:
                return f"{path}: level {level} decoded to an array of shape {region.shape} ({region.dtype}), not {th} x {tw} RGB. {_REEXPORT}"
    return None


def _open_failure(path: str, err: SlideError) -> str:
    """The reader's message, made specific where the file says more: not a slide at all, a
    truncated copy, or a compression OpenSlide cannot decode."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return str(err)
    if size == 0:
        return f"{path}: the file is empty (0 bytes). {_RECOPY}"
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if kind:
        return f"{path}: the file is {kind}, not a whole-slide image (whatever its name says); OpenSlide cannot read it. Give the path of the slide itself, or convert the image: {_REEXPORT[0].lower()}{_REEXPORT[1:]}"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_failure(path, size, err)
    return str(err)


def _tiff_failure(path: str, size: int, err: SlideError) -> str:
    """A TIFF OpenSlide refused: truncated (its data runs past the end of the file), or
    compressed with a codec OpenSlide lacks; else the reader's own message."""
    import tifffile

    text = str(err)
    cause = str(err.__cause__) if err.__cause__ is not None else text
    log = logging.getLogger("tifffile")
    quiet = _ThisThread()  # tifffile logs each broken page; the message below says it once
    log.addFilter(quiet)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            end = max((int(o) + int(n) for page in pages for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
            compressions = {page.compression for page in pages}
    except Exception:  # tifffile cannot parse it either
        return text
    finally:
        log.removeFilter(quiet)
    if end > size:
        return f"{path}: the file is truncated: its TIFF structure refers to byte {end:,} but the file has only {size:,} bytes ({cause}). {_RECOPY}"
    if "Unsupported TIFF compression" in cause:
        names = ", ".join(sorted(getattr(c, "name", str(c)) for c in compressions))
        return f"{path}: the TIFF uses {names} compression, which OpenSlide cannot decode ({cause}). {_REEXPORT}"
    return text


class _ThisThread(logging.Filter):
    """Drops the records logged by the thread that made it (other threads' records pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread
