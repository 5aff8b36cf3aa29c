"""Convolutional image stems: how a 2-D image becomes the grid of patch tokens the models attend over.

Every image model's attention is over the same grid: the model input (S × S pixels) cut into
cells of ``grid_cell`` pixels (`ModelSettings.grid_cell`), (S / P)² cells in row-major order, each with its top-left
corner in model pixels as its coordinate. So `ModelOutput.patch_attention` means the same thing
for slides (a map over tissue patches) and images (a map over image cells), and every analysis of
attention runs unchanged.

* `ConvBackbone` — a small CNN over the whole image (stride-2 stages, ``log2(P)`` of them): its
  last feature map has one cell per patch, and each cell sees its neighbours (receptive field
  larger than the patch). The CNN models (plain CNN, CNN + EHR, MMA-MGMU, ChexRadiNet) use it.
* `PatchGridEncoder` — the same kind of CNN applied to each patch on its own and pooled, as a
  slide pipeline encodes each tile: a patch's token depends on its pixels alone. The bag models
  (PersAM, ABMIL, TransMIL, concat) read images through it.
* `ImageModel` — a stem followed by any bag model.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from persam_lib.models.base import Batch, ModelConfig, ModelOutput


def stage_widths(d_model: int, stages: int) -> list[int]:
    """Channels of each stage: doubling up to ``d_model`` at the last stage (at least 8)."""
    return [max(d_model // 2 ** (stages - 1 - i), 8) for i in range(stages)]


def conv_stage(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution (3×3 conv, stride 2) and mix (3×3 conv), each with BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ConvBackbone(nn.Module):
    """``log2(grid_cell)`` stride-2 stages: (B, C, S, S) → (B, d_model, S/P, S/P), one cell per patch."""

    def __init__(self, in_channels: int, d_model: int, grid_cell: int):
        super().__init__()
        n = int(math.log2(grid_cell))
        widths = stage_widths(d_model, n)
        self.stages = nn.ModuleList(conv_stage(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths))
        self.out_dim = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for stage in self.stages:
            x = stage(x)
        return x


class PatchGridEncoder(nn.Module):
    """Each P × P patch encoded on its own by a small CNN and average-pooled: (B, C, S, S) → (B, N, d_model)."""

    def __init__(self, in_channels: int, d_model: int, grid_cell: int):
        super().__init__()
        self.grid_cell = grid_cell
        n = int(math.log2(grid_cell)) - 1  # stop at 2 × 2 per patch, then pool
        widths = stage_widths(d_model, n)
        self.stages = nn.Sequential(*(conv_stage(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)))
        self.out_dim = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, s, _ = images.shape
        p, g = self.grid_cell, s // self.grid_cell
        patches = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, c, p, p).contiguous(memory_format=torch.channels_last)
        return self.stages(patches).mean((2, 3)).reshape(b, g * g, -1)


def cell_coords(image_size: int, grid_cell: int, device: torch.device | None = None) -> torch.Tensor:
    """Top-left [x, y] (N, 2) of every cell of the patch grid, row-major, in model pixels."""
    g = image_size // grid_cell
    ys, xs = torch.meshgrid(torch.arange(g, device=device), torch.arange(g, device=device), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1) * grid_cell


def cells_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """A feature map (B, d, g, g) → tokens (B, g·g, d) in the row-major order of `cell_coords`."""
    return grid.flatten(2).transpose(1, 2)


def require_images(batch: Batch, model: str) -> torch.Tensor:
    """The batch's images in channels-last memory layout (the convolutions' fast path: a quarter
    less time per training step on CPU, and what cuDNN prefers), or an error saying this model was
    built for images. The layout is how the values are stored, not what they are."""
    if batch.images is None:
        raise ValueError(f"{model} was built for 2-D images (input_kind='image') but the batch holds no images")
    return batch.images.contiguous(memory_format=torch.channels_last)


class ImageModel(nn.Module):
    """A stem that turns images into patch tokens, then a bag model over them (the tokens are its "features")."""

    def __init__(self, stem: nn.Module, inner: nn.Module, config: ModelConfig, name: str = "image model"):
        super().__init__()
        self.stem, self.inner, self.name = stem, inner, name
        self.register_buffer("coords", cell_coords(config.image_size, config.grid_cell), persistent=False)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        images = require_images(batch, self.name)
        tokens = self.stem(images)  # (B, N, d); B = 1 for one image under several records
        if tokens.dim() == 4:  # a feature map: one token per cell
            tokens = cells_to_tokens(tokens)
        b, n = tokens.shape[:2]
        bag = Batch(tokens, torch.ones(b, n, dtype=torch.bool, device=tokens.device), self.coords.expand(b, -1, -1), batch.codes, batch.values)  # coords: model-input pixels
        return self.inner(bag, rollout=rollout)
