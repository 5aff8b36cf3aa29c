"""Writing a grey-level 2-D image as a DICOM file (the demo radiograph cohort, and tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from persam_lib.io.atomic import atomic_path
from persam_lib.images.reader import Window


def write_dicom(path: str | Path, pixels: np.ndarray, *, window: Window | None = None, patient_id: str = "", bits_stored: int = 12) -> Path:
    """Write ``pixels`` (H, W) unsigned integers as an uncompressed DX (digital X-ray) DICOM file, atomically.

    ``window`` is stored as the file's WindowCenter/WindowWidth, which readers (and
    `persam_lib.images.read_image`) use for display unless told otherwise. ``patient_id`` goes in
    PatientID: give a pseudonym, never a real identifier.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.min() < 0 or pixels.max() >= 2**bits_stored:
        raise ValueError(f"{path}: write_dicom takes a 2-D array of values in [0, {2 ** bits_stored}), got shape {pixels.shape}, range [{pixels.min()}, {pixels.max()}]")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", patient_id
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window.center, window.width
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
