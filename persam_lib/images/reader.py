"""Read one 2-D image (PNG, JPEG, BMP, TIFF, DICOM) as float32 in [0, 1], and letterbox it for a model.

`read_image` gives every format the same shape, (H, W, C) with C = 1 (grey) or 3 (RGB), so a model
sees one kind of input whatever the file; `to_model_input` places it on a square canvas and returns
the `Letterbox` that maps model pixels back to the original, so attention can be drawn on the file.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DICOM_SUFFIXES = {".dcm", ".dicom"}
_TIFF_SUFFIXES = {".tif", ".tiff"}
_DECOMPRESS_HINT = "decompress it first, e.g. `gdcmconv --raw in.dcm out.dcm` or `dcmdjpeg in.dcm out.dcm`"


class ImageReadError(ValueError):
    """An image could not be read; the message starts with the file path and says what to do."""

    def __init__(self, path: str | Path, problem: str, hint: str) -> None:
        super().__init__(f"{path}: {problem}; {hint}")


@dataclass(frozen=True)
class Window:
    """A display window in the DICOM sense: values around ``center`` spanning ``width`` map to 0..1."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"Window width must be > 0, got {self.width}; pass a positive width (e.g. 400).")


def apply_window(x: np.ndarray, window: Window) -> np.ndarray:
    """Linear DICOM windowing (PS3.3 C.11.2.1.2.1) into [0, 1]; a width <= 1 thresholds at center - 0.5."""
    x = np.nan_to_num(x.astype(np.float64), nan=-np.inf)  # a NaN pixel (float TIFF) shows as the window's floor
    c, w = window.center, window.width
    if w <= 1:
        return (x > c - 0.5).astype(np.float32)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _min_max(x: np.ndarray) -> np.ndarray:
    """Stretch the image's own range to [0, 1]; a constant (or all-NaN) image gives zeros."""
    x = x.astype(np.float64)
    lo, hi = (np.nanmin(x), np.nanmax(x)) if np.isfinite(x).any() else (0.0, 0.0)
    if not hi > lo:
        return np.zeros(x.shape, np.float32)
    return np.nan_to_num(np.clip((x - lo) / (hi - lo), 0.0, 1.0), nan=0.0).astype(np.float32)


def _to_unit(arr: np.ndarray, window: Window | None, path: Path) -> np.ndarray:
    """(H, W[, C]) samples of any dtype -> (H, W, 1|3) float32 in [0, 1]; alpha is dropped."""
    if arr.size == 0:
        raise ImageReadError(path, f"image has a zero dimension {arr.shape}", "check the export; it holds no pixels")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(path, f"pixel array of shape {arr.shape} is not a 2-D grey or RGB image",
                             "export a single 2-D grey or RGB image")
    arr = arr[..., :1] if arr.shape[-1] == 2 else arr[..., :3]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if window is not None:
        return apply_window(arr, window)
    return (arr / np.float32(255)).astype(np.float32) if arr.dtype == np.uint8 else _min_max(arr)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with path.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode == "1":
                img = img.convert("L")
            elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            return np.asarray(img)
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"is too large to read safely ({e})", "downsample it (e.g. to at most 8192 pixels a side) before use") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({e})",
                             "supported formats are PNG, JPEG, BMP, TIFF and DICOM; re-export the file") from e


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].levels[0].pages[0]  # first page of level 0 of the first series
            arr = page.asarray()
            if getattr(page, "keyframe", page).planarconfig == tifffile.PLANARCONFIG.SEPARATE and arr.ndim == 3:
                arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
            return arr
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as e:
        raise ImageReadError(path, f"not a readable TIFF ({e})", "re-export it as a plain 2-D TIFF or PNG") from e


def _first(value: object) -> float:
    """A DICOM window value as one float (the first of a multi-valued element)."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


def _read_dicom(path: Path, window: Window | None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageReadError(path, f"not a readable DICOM file ({e})", "check that the export finished and re-export it") from e
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data", "export an image object, not a report or structure set")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"a 3-D volume / {frames} frames", "export one 2-D frame")
    ts = ds.file_meta.get("TransferSyntaxUID")
    try:
        arr = ds.pixel_array  # pydicom 3 already converts YBR_* to RGB here (as_rgb default)
    except Exception as e:  # decoder plugins raise many types
        reason = " ".join(str(e).split())  # pydicom lists each plugin's failure on its own line
        if ts is not None and ts.is_compressed:
            raise ImageReadError(path, f"compressed transfer syntax {ts.name} ({ts}) could not be decoded ({reason})",
                                 _DECOMPRESS_HINT) from e
        raise ImageReadError(path, f"DICOM pixel data could not be decoded ({reason})", "re-export the image") from e
    samples = int(ds.get("SamplesPerPixel", 1))
    if arr.ndim == 3 and not (samples == 3 and arr.shape[-1] == 3):
        raise ImageReadError(path, f"a 3-D volume / {arr.shape[0]} frames", "export one 2-D frame")
    if samples == 3:
        return _to_unit(arr, window, path)
    x = apply_modality_lut(arr, ds).astype(np.float64)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) > 0:
        window = Window(_first(ds.WindowCenter), _first(ds.WindowWidth))
    y = _to_unit(x, window, path)
    return 1.0 - y if ds.get("PhotometricInterpretation", "") == "MONOCHROME1" else y


def read_image(path: str | Path, window: Window | None = None) -> np.ndarray:
    """Read a 2-D image as (H, W, C) float32 in [0, 1], C = 1 (grey) or 3 (RGB).

    8-bit data is divided by 255; deeper grey data (16-bit, int32, float) is stretched over its own
    min..max. A ``window`` replaces either rule. DICOM applies the modality LUT, then ``window``, else
    the file's own WindowCenter/WindowWidth, else min..max; MONOCHROME1 is inverted so bright is dense.
    Raises ImageReadError (path first, then what to do) for missing, empty, corrupt or 3-D inputs.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found", "check the path (relative paths start at the working directory)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty", "re-export or re-copy the image")
    if _is_dicom(path):
        return _read_dicom(path, window)
    arr = _read_tiff(path) if path.suffix.lower() in _TIFF_SUFFIXES else _read_pil(path)
    return _to_unit(arr, window, path)


@dataclass(frozen=True)
class Letterbox:
    """Where an original image sits in the square model input: model_xy = original_xy * scale + offset.

    Coordinates are continuous pixels with (0, 0) at the top-left corner of the top-left pixel.
    """

    scale: float
    offset_x: float
    offset_y: float
    size: int

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) [x, y] in model pixels -> (N, 2) [x, y] in original pixels (float64)."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.array([self.offset_x, self.offset_y])) / self.scale

    def original_patch(self, patch: int) -> float:
        """The side, in original pixels, of a ``patch``-pixel square of the model input."""
        return patch / self.scale


def _resize(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def to_model_input(image: np.ndarray, size: int, channels: int) -> tuple[np.ndarray, Letterbox]:
    """(H, W, C) in [0, 1] -> ((channels, size, size) float32, Letterbox).

    Grey is replicated to RGB; RGB becomes grey by luminance (0.299, 0.587, 0.114). The longer side
    is scaled to ``size`` (antialiased bilinear, aspect kept) and centred on a zero-padded square.
    The shorter side is rounded to whole pixels, so the mapping is exact to within half a pixel there.
    """
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or 0 in image.shape:
        raise ValueError(f"image must be (H, W, 1|3) with H, W > 0, got shape {image.shape}; use read_image().")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}.")
    image = image.astype(np.float32)
    if image.shape[-1] == 3 and channels == 1:
        image = image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]  # (H, W, 1)
    elif image.shape[-1] == 1 and channels == 3:
        image = np.repeat(image, 3, axis=-1)  # (H, W, 3)
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    off_x, off_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.zeros((channels, size, size), np.float32)  # (C, size, size)
    for c in range(channels):
        plane = image[..., c] if (new_w, new_h) == (w, h) else _resize(image[..., c], new_w, new_h)
        out[c, off_y:off_y + new_h, off_x:off_x + new_w] = plane
    return np.clip(out, 0.0, 1.0), Letterbox(scale=scale, offset_x=float(off_x), offset_y=float(off_y), size=size)
