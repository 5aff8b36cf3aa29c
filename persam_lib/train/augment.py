"""Training-time augmentation of 2-D images: random horizontal flips and small shifts.

A CNN trained on a hundred radiographs memorises them within a few epochs; flipping (a lesion may
sit in either lung) and shifting by a few pixels are the augmentations that keep the anatomy
plausible. Draws come from a generator seeded by (seed, epoch, rank) (`epoch_generator`): a resumed
run augments exactly as an uninterrupted one, and ranks under torchrun never disturb the shared
order of samples. Evaluation and explanation never augment.
"""
from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The generator one rank's augmentation draws from during one epoch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_009 + rank)


def augment_images(images: torch.Tensor, generator: torch.Generator, fill: torch.Tensor | None = None, max_shift: float = 1 / 16) -> torch.Tensor:
    """(B, C, S, S) → the same images, each flipped left–right with probability 1/2 and shifted by
    up to ``max_shift`` of its side in x and y, the uncovered border set to ``fill`` (C,) — the
    standardised value of a black pixel, so a shift looks like the letterbox's own border (default 0)."""
    b, c, s, _ = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
    m = int(round(max_shift * s))
    if m == 0:
        return out
    shifts = torch.randint(0, 2 * m + 1, (b, 2), generator=generator).tolist()
    padded = out.new_zeros(b, c, s + 2 * m, s + 2 * m)
    if fill is not None:
        padded[:] = fill.to(out)[None, :, None, None]  # the border shifts uncover
    padded[:, :, m : m + s, m : m + s] = out
    return torch.stack([padded[i, :, dy : dy + s, dx : dx + s] for i, (dx, dy) in enumerate(shifts)])
