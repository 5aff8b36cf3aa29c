"""Attention out of the tool, into the viewers pathologists use: QuPath GeoJSON and TIFF overlays.

`write_geojson` writes one FeatureCollection per slide: one Polygon tile per patch in level-0
pixels (QuPath's ``objectType: "tile"``), the attention under every record as its measurements
(``attention: original record``, ``attention: site=extranodal``, ...), so QuPath can colour the
tiles by any of them (File → Import objects). `write_overlay` writes the attention under one record
as a pyramidal, tiled TIFF with the slide's level-0 size and resolution (microns per pixel), so
OpenSlide and QuPath open it on the slide's coordinates; tiles are made one at a time from the patch
grid, so memory stays small whatever the slide's size. Outputs are written atomically, inside the
output folder, under names made safe from the record's label.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from matplotlib import colormaps

from persam_lib.explain.records import ORIGINAL
from persam_lib.io.atomic import atomic_path, write_text_atomic
from persam_lib.io.paths import inside

OVERLAY_CMAP = "magma"
TILE = 256


def record_file_name(record: str) -> str:
    """A file name for a record's label: ``original`` stays, ``site=extranodal;age=40`` becomes
    ``site-extranodal_age-40``; anything else outside [A-Za-z0-9._-] becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", record.replace("=", "-").replace(";", "_")) or "record"


def slide_tiles(attention: pd.DataFrame, slide_id: str) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """A slide's patch corners (N, 2), patch size and attention per record, in one patch order."""
    part = attention[attention["slide_id"] == slide_id]
    if part.empty:
        raise ValueError(f"slide '{slide_id}' is not in the attention table")
    first = part[part["record"] == ORIGINAL].sort_values(["y", "x"])
    maps = {record: rows.sort_values(["y", "x"])["attention"].to_numpy() for record, rows in part.groupby("record", sort=False)}
    return first[["x", "y"]].to_numpy(np.int64), int(first["size"].iloc[0]), maps


def geojson(coords: np.ndarray, size: int, maps: dict[str, np.ndarray], slide_name: str) -> dict:
    """The FeatureCollection of one slide's tiles with the attention under each record as measurements."""
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        features.append({
            "type": "Feature",
            "id": f"{slide_name}-tile-{i}",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "tile", "name": f"patch {i}", "measurements": {f"attention: {record}": float(values[i]) for record, values in maps.items()}},
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(attention: pd.DataFrame, slide_id: str, slide_name: str, out_dir: str | Path) -> Path:
    """``<out_dir>/<slide_name>.geojson`` (atomically)."""
    coords, size, maps = slide_tiles(attention, slide_id)
    target = inside(Path(out_dir), f"{slide_name}.geojson")
    return write_text_atomic(target, json.dumps(geojson(coords, size, maps, slide_name)))


def attention_grid(coords: np.ndarray, size: int, values: np.ndarray, level0: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Attention painted on a grid of one cell per ``size // 4`` level-0 pixels (NaN off the patches),
    scaled to [0, 1] by the slide's largest value; and the grid's downsample."""
    cell = max(size // 4, 1)
    width, height = level0
    grid = np.full((int(np.ceil(height / cell)), int(np.ceil(width / cell))), np.nan, np.float32)
    top = float(values.max()) if len(values) and values.max() > 0 else 1.0
    span = max(size // cell, 1)
    for (x, y), v in zip(coords, values):
        grid[y // cell : y // cell + span, x // cell : x // cell + span] = v / top
    return grid, float(cell)


def _tiles(grid: np.ndarray, cell: float, shape: tuple[int, int], downsample: int):
    """The overlay's RGB tiles of one pyramid level, row by row (what tifffile writes from)."""
    lut = (colormaps[OVERLAY_CMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    height, width = shape
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            ys = ((np.arange(top, top + TILE) * downsample) / cell).astype(int).clip(0, grid.shape[0] - 1)
            xs = ((np.arange(left, left + TILE) * downsample) / cell).astype(int).clip(0, grid.shape[1] - 1)
            block = grid[np.ix_(ys, xs)]
            tile = np.full((TILE, TILE, 3), 255, np.uint8)  # off the patches: white
            on = ~np.isnan(block)
            tile[on] = lut[(block[on] * 255).astype(int).clip(0, 255)]
            yield tile


def write_overlay(attention: pd.DataFrame, slide_id: str, record: str, level0: tuple[int, int], mpp: float, out_path: str | Path, downsamples: tuple[int, ...] = (1, 4, 16, 64)) -> Path:
    """The attention under ``record`` as a pyramidal tiled TIFF of the slide's level-0 size
    (width, height) and resolution; white off the patches, the colour map scaled to the slide's maximum."""
    coords, size, maps = slide_tiles(attention, slide_id)
    if record not in maps:
        raise ValueError(f"slide '{slide_id}' has no record '{record}' in the attention table (records: {', '.join(maps)})")
    grid, cell = attention_grid(coords, size, maps[record], level0)
    width, height = level0
    levels = [ds for ds in downsamples if ds == 1 or min(width, height) // ds >= TILE]
    pixels_per_cm = 1e4 / mpp
    with atomic_path(Path(out_path)) as tmp, tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
        for i, ds in enumerate(levels):
            shape = (int(np.ceil(height / ds)), int(np.ceil(width / ds)))
            tif.write(
                _tiles(grid, cell, shape, ds), shape=(*shape, 3), dtype=np.uint8, photometric="rgb", tile=(TILE, TILE), compression="zlib",
                resolution=(pixels_per_cm / ds, pixels_per_cm / ds), resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1, metadata=None,
                description=f"persam attention overlay; record={record}; mpp={mpp}" if i == 0 else None,
            )
    return Path(out_path)


def export_slides(run, cohort, features_dir: str | Path | None, slides: list[str] | None, fmt: str, out_dir: str | Path, *, fold: int | None = None, pseudonyms: bool = False) -> list[Path]:
    """What `persam export` does: explain ``slides`` of ``cohort`` (default: all) with ``run`` (the
    fold ensemble for new patients, or ``fold``; ``slides=None`` is every slide) and write, inside ``out_dir``, one GeoJSON per
    slide (``fmt="geojson"``) or one TIFF overlay per slide and record (``<slide>/<record>.tiff``);
    files are named by the slide's pseudonym with ``pseudonyms``. Returns the files written."""
    from dataclasses import replace

    from persam_lib.book.privacy import Pseudonyms
    from persam_lib.explain.attention import ExplainConfig, explain_run
    from persam_lib.io.paths import check_writable_folder
    from persam_lib.slides.factory import open_slide

    if fmt not in ("geojson", "tiff"):
        raise ValueError(f"export format '{fmt}': use geojson or tiff")
    if cohort.modality != "slides":
        raise ValueError(f"{cohort.manifest_path}: export writes slide overlays (GeoJSON tiles, TIFF at the slide's level 0); this is a cohort of {cohort.modality}")
    known = list(cohort.slides["slide_id"])
    chosen = known if slides is None else list(slides)
    if not chosen:
        raise ValueError(f"no slide to export from {cohort.manifest_path}: name one with --slides, or leave it out for every slide")
    unknown = [s for s in chosen if s not in set(known)]
    if unknown:
        raise ValueError(f"--slides names slide(s) not in {cohort.manifest_path}: {', '.join(unknown)}")
    check_writable_folder(out_dir)
    subset = replace(cohort, slides=cohort.slides[cohort.slides["slide_id"].isin(chosen)].reset_index(drop=True))
    explanation = explain_run(run, subset, features_dir, config=ExplainConfig(fold=fold), progress=False)
    names = Pseudonyms.for_cohort(cohort) if pseudonyms else None
    paths = subset.slides.set_index("slide_id")["path"]
    written: list[Path] = []
    for slide_id in chosen:
        name = names.slide(slide_id) if names else slide_id
        if fmt == "geojson":
            written.append(write_geojson(explanation.attention, slide_id, name, out_dir))
            continue
        with open_slide(paths[slide_id]) as slide:
            level0, mpp = slide.level_dimensions[0], slide.mpp
        for record in explanation.attention.loc[explanation.attention["slide_id"] == slide_id, "record"].unique():
            target = inside(Path(out_dir), name, f"{record_file_name(record)}.tiff")
            target.parent.mkdir(parents=True, exist_ok=True)
            written.append(write_overlay(explanation.attention, slide_id, record, level0, mpp, target))
    return written
