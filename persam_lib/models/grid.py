"""Placing a bag's patch tokens on their slide grid (from level-0 coordinates) and back.

Convolutional models (TransMIL's position encoding, ChexRadiNet's triplet attention) need the
patches as an image. Each bag's grid step is the smallest spacing between its own patch
coordinates, so a bag lands on the same cells whatever else is in the batch.
"""
from __future__ import annotations

import torch

MAX_EMPTY_CELLS_PER_PATCH = 64


def grid_positions(coords: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Column/row of every patch (B, N, 2) and the grid size (H, W) covering the batch."""
    pos = torch.zeros_like(coords, dtype=torch.long)
    for b in range(coords.shape[0]):
        real = coords[b][mask[b]].long()
        if len(real) == 0:
            continue
        for axis in (0, 1):
            values = torch.unique(real[:, axis])
            gaps = values[1:] - values[:-1]
            step = int(gaps.min()) if len(gaps) else 1
            pos[b, mask[b], axis] = torch.div(real[:, axis] - values[0], step, rounding_mode="floor")
    h = int(pos[..., 1].max()) + 1
    w = int(pos[..., 0].max()) + 1
    n = int(mask.sum(1).max())
    if h * w > MAX_EMPTY_CELLS_PER_PATCH * max(n, 1) + 1024:
        raise ValueError(f"patch coordinates do not lie on a regular grid (a {h}x{w} grid for {n} patches); grid-based models need patches from a regular patch grid")
    return pos, h, w


def scatter_to_grid(tokens: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, N, d) → grid (B, d, H, W) with zeros where no patch lies, and each patch's flat index."""
    b, n, d = tokens.shape
    pos, h, w = grid_positions(coords, mask)
    index = pos[..., 1] * w + pos[..., 0]  # (B, N)
    index = torch.where(mask, index, torch.full_like(index, h * w))  # padding goes to a spare cell
    flat = tokens.new_zeros(b, h * w + 1, d)
    flat.scatter_(1, index[..., None].expand(-1, -1, d), tokens)
    grid = flat[:, : h * w].transpose(1, 2).reshape(b, d, h, w)
    return grid, index


def gather_from_grid(grid: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """grid (B, d, H, W) → tokens (B, N, d) at each patch's cell (zeros for padding)."""
    b, d, h, w = grid.shape
    flat = torch.cat([grid.reshape(b, d, h * w).transpose(1, 2), grid.new_zeros(b, 1, d)], dim=1)
    return flat.gather(1, index[..., None].expand(-1, -1, d)) * mask[..., None]
