"""How features are extracted: `ExtractConfig`, saved as ``extract_config.json`` beside the features
and recorded (with the encoder's weights) in every feature file (`persam_lib.features.settings`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from persam_lib.slides.patching import PatchConfig
from persam_lib.slides.tissue import TissueConfig

READER_BACKENDS = ("auto", "openslide")  # "auto": the fast tiled-TIFF path where possible, else OpenSlide


@dataclass(frozen=True)
class ExtractConfig:
    """How features are extracted; saved as ``extract_config.json`` beside the features."""

    encoder: str = "stats"
    encoder_weights: str | None = None  # local weight file for CNN/ViT encoders
    patch: PatchConfig = field(default_factory=PatchConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    thumbnail_downsample: float = 16.0  # tissue is segmented at this downsample of level 0 (8 µm/px at 20x), box-averaged from the nearest stored level
    batch_size: int = 64
    num_workers: int = -1  # patch-reading processes; -1 = one per CPU but one, 0 = read in the main process
    reader_backend: str = "auto"  # "auto" (fast tiled-TIFF path when possible), "openslide"

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"The 'batch_size' parameter (--batch-size) must be an int >= 1. Got {self.batch_size!r} instead.")
        if not isinstance(self.num_workers, int) or self.num_workers < -1:
            raise ValueError(f"The 'num_workers' parameter (--readers) must be -1 (one per CPU but one), 0 (read in the main process) or a positive int. Got {self.num_workers!r} instead.")
        if not self.thumbnail_downsample > 0:
            raise ValueError(f"The 'thumbnail_downsample' parameter must be > 0. Got {self.thumbnail_downsample!r} instead.")
        if self.reader_backend not in READER_BACKENDS:
            raise ValueError(f"The 'reader_backend' parameter (--reader-backend) must be 'auto' or 'openslide'. Got {self.reader_backend!r} instead.")

    def workers(self) -> int:
        if self.num_workers >= 0:
            return self.num_workers
        return max((os.cpu_count() or 1) - 1, 1)
