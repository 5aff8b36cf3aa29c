"""Write pyramidal, tiled, JPEG-compressed TIFF slides that OpenSlide opens.

OpenSlide's generic-TIFF reader takes reduced-resolution levels from the main IFD chain
(pages marked as reduced images, NewSubfileType=1), not from SubIFDs, so the pyramid is
written that way. The resolution tags carry the microns per pixel (OpenSlide reports them as
``openslide.mpp-x`` / ``mpp-y``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from persam_lib.io.atomic import atomic_path
from persam_lib.slides.base import downsample


def write_pyramidal_tiff(
    path: str | Path,
    level0_rgb: np.ndarray,
    *,
    mpp: float,
    downsamples: tuple[int, ...] = (1, 4, 16),
    tile_size: int = 256,
    jpeg_quality: int = 85,
) -> Path:
    """Write ``level0_rgb`` (H, W, 3 uint8) as a pyramidal TIFF with the given downsamples.

    The file is written to a temporary name and renamed when complete, so a crash never leaves
    a half-written slide under the final name.
    """
    path = Path(path)
    if level0_rgb.ndim != 3 or level0_rgb.shape[2] != 3 or level0_rgb.dtype != np.uint8:
        raise ValueError(f"level0_rgb must be (H, W, 3) uint8, got {level0_rgb.shape} {level0_rgb.dtype}")
    if downsamples[0] != 1 or list(downsamples) != sorted(downsamples):
        raise ValueError(f"downsamples must start at 1 and increase, got {downsamples}")
    pixels_per_cm = 1e4 / mpp
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=level0_rgb.nbytes > 2**31) as tif:
        for i, ds in enumerate(downsamples):
            level = level0_rgb if ds == 1 else downsample(level0_rgb, ds)
            tif.write(
                level,
                photometric="rgb",
                tile=(tile_size, tile_size),
                compression="jpeg",
                compressionargs={"level": jpeg_quality},
                resolution=(pixels_per_cm / ds, pixels_per_cm / ds),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
                description=f"persam demo slide; mpp={mpp}" if i == 0 else None,
            )
    return path

