"""ChexRadiNet: triplet attention over the image, and radiomics of the attended region fed back.

Each iteration refines the patch-feature map (patches placed on their slide grid from coords) with
**triplet attention** — three branches capturing channel–height, channel–width and height–width
interactions by pooling over the third dimension (Misra et al. 2021) — and pools it with a spatial
attention (the heatmap). The heatmap's top patches form a region whose **radiomics** (first-order
intensity statistics and GLCM texture, scikit-image) are embedded and fed back as a guidance signal
to the next iteration, so regions and features sharpen together. ``radiomics_iterations`` sets
how many rounds; it reads the image only (chest X-rays in the original work).

`ChexRadiNetImage` is the native form on 2-D images: a CNN with triplet attention after its last
two stages, the heatmap over the last feature map's cells, and radiomics computed on the input
image's own pixels inside the heatmap's region. `ChexRadiNet` runs on a slide's patch features
placed on their grid, with radiomics of the feature map's mean as the grey-level image.
"""
from __future__ import annotations

import torch
from torch import nn

from persam_lib.models.layers import patch_embedding
from persam_lib.models.base import Batch, ModelConfig, ModelOutput, masked_softmax, single_attention_output
from persam_lib.models.cnn import ConvBackbone, cells_to_tokens, require_images
from persam_lib.models.grid import gather_from_grid, scatter_to_grid
from persam_lib.models.radiomics import N_FEATURES, radiomics_batch


class AttentionGate(nn.Module):
    """Z-pool (max and mean over dim 1) → 7x7 conv → sigmoid, scaling the input."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class TripletAttention(nn.Module):
    """(B, C, H, W) → same shape; the mean of three rotated attention gates."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.channel_width = AttentionGate(kernel)
        self.channel_height = AttentionGate(kernel)
        self.spatial = AttentionGate(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cw = self.channel_width(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # pool over H: C-W interaction
        ch = self.channel_height(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # pool over W: C-H interaction
        hw = self.spatial(x)  # pool over C: H-W interaction
        return (cw + ch + hw) / 3


class RadiomicsGuidance(nn.Module):
    """What both forms share: each iteration refines the map (B, d, H, W) with triplet attention
    under the current guidance, scores its cells (the heatmap), and turns the radiomics of the
    heatmap's region into the next guidance; the head reads the pooled map and the last guidance."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.iterations = max(int(config.radiomics_iterations), 1)
        self.triplet = TripletAttention()
        self.mix = nn.Conv2d(d, d, 3, padding=1)
        self.heat = nn.Conv2d(d, 1, 1)
        self.guide = nn.Sequential(nn.Linear(N_FEATURES, d), nn.Tanh())
        self.radiomics_norm = nn.LayerNorm(N_FEATURES)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * d, config.n_classes))

    def refine(self, grid: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined map and its heat scores (B, 1, H, W) under ``guidance`` (B, d)."""
        refined = torch.relu(self.mix(self.triplet(grid + guidance[:, :, None, None]))) + grid
        return refined, self.heat(refined)

    def next_guidance(self, features: torch.Tensor) -> torch.Tensor:
        """Radiomics features (B, N_FEATURES) → the guidance (B, d) of the next iteration."""
        return self.guide(self.radiomics_norm(features))

    def classify(self, pooled: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([pooled, guidance], dim=-1))


class ChexRadiNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.region_fraction = config.region_fraction
        self.embed = patch_embedding(config.feature_dim, config.d_model, config.dropout)
        self.guidance = RadiomicsGuidance(config)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        patches = self.embed(batch.features)  # (B, N, d)
        grid, index = scatter_to_grid(patches, batch.coords, batch.patch_mask)  # (B, d, H, W)
        guidance = torch.zeros(grid.shape[0], grid.shape[1], device=grid.device, dtype=grid.dtype)
        intensity = grid.detach().float().mean(1)  # (B, H, W): the grey-level image radiomics are computed on
        for _ in range(self.guidance.iterations):
            refined, heat = self.guidance.refine(grid, guidance)
            tokens = gather_from_grid(refined, index, batch.patch_mask)  # (B, N, d)
            scores = gather_from_grid(heat, index, batch.patch_mask).squeeze(-1)  # (B, N)
            attention = masked_softmax(scores, batch.patch_mask)
            pooled = torch.einsum("bn,bnd->bd", attention.to(tokens.dtype), tokens)
            guidance = self.guidance.next_guidance(self._region_radiomics(attention.detach(), index, batch.patch_mask, intensity))
        return single_attention_output(self.guidance.classify(pooled, guidance), attention).expand(batch.n_rows)  # the record cannot change it

    def _region_radiomics(self, attention: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """Radiomics of the top ``region_fraction`` of each bag's patches by attention, for the whole
        batch at once (`radiomics_batch`, on the model's device); a bag without patches gets zeros."""
        b, h, w = intensity.shape
        n = mask.sum(1)  # (B,) real patches, first in each row
        k = torch.where(n > 0, (self.region_fraction * n.to(torch.float64)).round().clamp_min(1), 0).long()
        scores = attention.masked_fill(~mask, float("-inf"))
        rank = torch.empty_like(index).scatter_(1, scores.argsort(dim=1, descending=True, stable=True), torch.arange(index.shape[1], device=index.device).expand_as(index))
        chosen = rank < k[:, None]
        region = torch.zeros(b, h * w + 1, dtype=torch.bool, device=intensity.device)
        region.scatter_(1, torch.where(chosen, index, h * w), True)  # unchosen patches go to the spare cell
        return radiomics_batch(intensity, region[:, : h * w].reshape(b, h, w)).to(attention.device)


class ChexRadiNetImage(nn.Module):
    """ChexRadiNet on 2-D images: triplet-attention CNN, heatmap regions → radiomics of the pixels → guidance."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.region_fraction = config.region_fraction
        self.grid_cell = config.grid_cell
        self.backbone = ConvBackbone(config.feature_dim, config.d_model, config.grid_cell)
        n = len(self.backbone.stages)
        self.stage_triplets = nn.ModuleDict({str(i): TripletAttention() for i in range(max(n - 2, 0), n)})  # after the last two stages
        self.project = nn.Conv2d(self.backbone.out_dim, config.d_model, 1)
        self.guidance = RadiomicsGuidance(config)

    def forward(self, batch: Batch, *, rollout: bool = False) -> ModelOutput:
        images = require_images(batch, "chexradinet")
        x = images
        for i, stage in enumerate(self.backbone.stages):
            x = stage(x)
            if str(i) in self.stage_triplets:
                x = x + self.stage_triplets[str(i)](x)
        grid = self.project(x)  # (B, d, g, g)
        intensity = images.detach().float().mean(1)  # (B, S, S): the grey levels radiomics are computed on
        guidance = grid.new_zeros(grid.shape[0], grid.shape[1])
        for _ in range(self.guidance.iterations):
            refined, heat = self.guidance.refine(grid, guidance)
            attention = torch.softmax(heat.flatten(1).float(), dim=-1)  # (B, N)
            pooled = torch.einsum("bn,bnd->bd", attention.to(refined.dtype), cells_to_tokens(refined))
            guidance = self.guidance.next_guidance(self._region_radiomics(attention.detach(), intensity))
        return single_attention_output(self.guidance.classify(pooled, guidance), attention).expand(batch.n_rows)  # the record cannot change it

    def _region_radiomics(self, attention: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """Radiomics of the input pixels (B, S, S) inside the top ``region_fraction`` of cells by
        attention, computed on the model's device for the whole batch at once."""
        b, n = attention.shape
        g, p = int(round(n**0.5)), self.grid_cell
        k = max(int(round(self.region_fraction * n)), 1)
        cells = torch.zeros(b, n, dtype=torch.bool, device=attention.device)
        cells.scatter_(1, torch.topk(attention, k, dim=-1).indices, True)
        region = cells.view(b, g, 1, g, 1).expand(b, g, p, g, p).reshape(b, g * p, g * p)  # cells → pixels
        return radiomics_batch(intensity, region).to(intensity.device)
