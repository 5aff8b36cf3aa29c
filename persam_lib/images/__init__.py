"""Single 2-D images (PNG, JPEG, BMP, TIFF, DICOM) read as [0, 1] arrays and letterboxed for a model."""
from persam_lib.images.reader import (
    ImageReadError,
    Letterbox,
    Window,
    apply_window,
    read_image,
    to_model_input,
)

__all__ = ["ImageReadError", "Letterbox", "Window", "apply_window", "read_image", "to_model_input"]
