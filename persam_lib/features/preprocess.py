"""How a patch becomes a model's input: resize, centre crop, scale to [0, 1] and normalise.

Each encoder carries one `Preprocess`, so its features are made with the resize and the mean/std
the model was trained with (a foundation model fed ImageNet statistics it never saw, or patches of
the wrong size, gives features that look fine and are wrong). The default — ImageNet mean/std, no
resize — is what ``resnet50_trunc`` and ``vit_s16`` have always used.

Resizing follows torchvision's ``Resize(size)`` on a square patch (both sides to ``size``) and
``CenterCrop``; it runs on the encoder's device with antialiasing and rounds to whole 8-bit
values, as resizing the PIL image would (within one level on natural images).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What is done to uint8 RGB patches before the model sees them.

    ``resize``: side in pixels both sides are resized to (None: patches go in at their own size);
    ``crop``: side of the centre crop taken after resizing (None: no crop); ``interpolation``:
    ``"bilinear"`` or ``"bicubic"``; ``mean``/``std``: per-channel normalisation of values in [0, 1].
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: int | None = None
    crop: int | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values (std > 0), got mean={self.mean}, std={self.std}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of pixels or None, got {value}")
        if self.resize and self.crop and self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) cannot be larger than resize ({self.resize})")

    @property
    def input_size(self) -> int | None:
        """Side of the square image the model receives (None: the patch's own size)."""
        return self.crop or self.resize

    def describe(self) -> str:
        """One line for tables and logs, e.g. ``resize 256 (bicubic), crop 224, mean/std ImageNet``."""
        parts = []
        if self.resize:
            parts.append(f"resize {self.resize} ({self.interpolation})")
        if self.crop:
            parts.append(f"crop {self.crop}")
        stats = "ImageNet" if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD) else f"{list(self.mean)} / {list(self.std)}"
        return ", ".join(parts + [f"mean/std {stats}"])


def preprocess_patches(patches: torch.Tensor, prep: Preprocess) -> torch.Tensor:
    """uint8 (or 0..255 float) patches (B, 3, S, S) → normalised float (B, 3, S', S') for the model."""
    x = patches.float() if patches.dtype != torch.float32 else patches.clone()
    if prep.resize and tuple(x.shape[-2:]) != (prep.resize, prep.resize):
        x = F.interpolate(x, size=(prep.resize, prep.resize), mode=prep.interpolation, align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)  # an 8-bit image again, as PIL's resize gives
    if prep.crop:
        h, w = x.shape[-2:]
        if prep.crop > min(h, w):
            raise ValueError(f"cannot centre-crop {prep.crop} px from {h}x{w} patches; resize first or pass larger patches")
        top, left = int(round((h - prep.crop) / 2.0)), int(round((w - prep.crop) / 2.0))
        x = x[..., top: top + prep.crop, left: left + prep.crop]
    x = x.div_(255)
    mean = torch.tensor(prep.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
