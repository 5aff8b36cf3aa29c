"""Training-time augmentation of 2-D images: random horizontal flips and small shifts.

A CNN trained on a hundred radiographs memorises them within a few epochs; flipping (a lesion may
sit in either lung) and shifting by a few pixels are the augmentations that keep the anatomy
plausible. Draws come from the training loop's own generator, so a resumed run augments exactly as
an uninterrupted one. Evaluation and explanation never augment.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_images(images: torch.Tensor, generator: torch.Generator, max_shift: float = 1 / 16) -> torch.Tensor:
    """(B, C, S, S) → the same images, each flipped left–right with probability 1/2 and shifted by
    up to ``max_shift`` of its side in x and y (the border filled with zeros: the mean of
    standardised pixels)."""
    b, _, s, _ = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
    m = int(round(max_shift * s))
    if m == 0:
        return out
    shifts = torch.randint(0, 2 * m + 1, (b, 2), generator=generator).tolist()
    padded = F.pad(out, (m, m, m, m))
    return torch.stack([padded[i, :, dy : dy + s, dx : dx + s] for i, (dx, dy) in enumerate(shifts)])
