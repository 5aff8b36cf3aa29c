"""A Vision Transformer in timm's exact module layout, so timm weight files load strictly without timm.

Module names follow timm's ``VisionTransformer``: patch_embed.proj, cls_token, reg_token,
pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma},
norm. `ViTConfig` holds every option the pathology foundation models use on top of the plain ViT:

- LayerScale (``init_values``: UNI, UNI2-h, Virchow 2, H-optimus-0, Prov-GigaPath, CONCH v1.5) —
  ``ls1.gamma`` / ``ls2.gamma`` scale each residual branch;
- register tokens (``reg_tokens``: UNI2-h 8, Virchow 2 4, H-optimus-0 4) — ``reg_token``, placed
  after the class token, carrying no position when ``no_embed_class``;
- SwiGLU MLP in timm's ``SwiGLUPacked`` layout (``mlp="swiglu_packed"``) — ``mlp.fc1`` maps D to
  the packed hidden width H (gate half first, then value half), ``mlp.fc2`` maps H/2 back to D;
  out = fc2(silu(gate) * value);
- ``no_embed_class``: position embeddings for the patch tokens only (DINOv2-style timm models),
  else also for the class and register tokens.

The read-out (`persam_lib.features.readout`) picks the class token or class ⊕ patch mean.
Position embeddings are resized when the patch grid differs from the trained one; with each
preset's preprocessing the grid always matches, so presets give the same numbers as timm.
``ViTSmall16`` is the ViT-S/16 behind the ``vit_s16`` encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from persam_lib.features.readout import Readout, check_readout, read_out, readout_dim


@dataclass(frozen=True)
class ViTConfig:
    """Every architecture knob of `VisionTransformer`, with the ViT-S/16 defaults.

    ``pos_resample`` says how position embeddings follow a patch grid other than the trained one:
    ``"bicubic"`` (plain bicubic, what ``vit_s16`` has always done), ``"timm"`` (bicubic with
    antialiasing, timm's ``dynamic_img_size``) or ``"dino"`` (the DINO/iBOT scale-factor formula,
    which CONCH v1.5's own code uses).
    """

    embed_dim: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    mlp: Literal["gelu", "swiglu_packed"] = "gelu"
    init_values: float | None = None
    reg_tokens: int = 0
    no_embed_class: bool = False
    readout: Readout = "cls"
    pos_resample: Literal["bicubic", "timm", "dino"] = "bicubic"

    def __post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})")
        if self.img_size % self.patch:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch ({self.patch})")
        if self.mlp not in ("gelu", "swiglu_packed"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu_packed', got {self.mlp!r}")
        if self.mlp == "swiglu_packed" and self.hidden % 2:
            raise ValueError(f"a packed SwiGLU needs an even hidden width, got int({self.embed_dim} * {self.mlp_ratio}) = {self.hidden}")
        if self.pos_resample not in ("bicubic", "timm", "dino"):
            raise ValueError(f"pos_resample must be 'bicubic', 'timm' or 'dino', got {self.pos_resample!r}")
        check_readout(self.readout)

    @property
    def hidden(self) -> int:
        """Width of ``mlp.fc1``'s output, timm's ``int(embed_dim * mlp_ratio)``."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid(self) -> int:
        """Patches per side at ``img_size``."""
        return self.img_size // self.patch

    @property
    def num_prefix_tokens(self) -> int:
        """Class token plus registers."""
        return 1 + self.reg_tokens

    @property
    def dim(self) -> int:
        """Length of the feature vector the read-out gives."""
        return readout_dim(self.embed_dim, self.readout)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, D/H)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUPacked(nn.Module):
    """timm's ``SwiGLUPacked``: one fc1 holding gate and value halves, SiLU on the gate."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # 2 × (B, N, H/2)
        return self.fc2(self.act(gate) * value)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, mlp: str = "gelu", init_values: float | None = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLUPacked(dim, hidden) if mlp == "swiglu_packed" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resample_positions(pos: torch.Tensor, grid: int, num_prefix: int, mode: str = "bicubic") -> torch.Tensor:
    """Position embeddings (1, num_prefix + G², D) → (1, num_prefix + grid², D), the prefix rows kept.

    ``mode``: ``"bicubic"`` (plain), ``"timm"`` (bicubic, antialiased: timm's
    ``resample_abs_pos_embed``), ``"bilinear"`` (no antialiasing: how CONCH v1.5's loader fits a
    stored grid to the model's) or ``"dino"`` (bicubic with DINO's ``(grid + 0.1) / G`` scale factor).
    """
    prefix, table = pos[:, :num_prefix], pos[:, num_prefix:]
    old = int(math.isqrt(table.shape[1]))
    if old * old != table.shape[1]:
        raise ValueError(f"position embeddings for {table.shape[1]} patches are not a square grid")
    if old == grid:
        return pos
    table = table.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()  # (1, D, G, G)
    if mode == "dino":
        scale = (grid + 0.1) / old
        table = F.interpolate(table, scale_factor=(scale, scale), mode="bicubic")
    elif mode in ("bicubic", "timm", "bilinear"):
        interp = "bilinear" if mode == "bilinear" else "bicubic"
        table = F.interpolate(table, size=(grid, grid), mode=interp, align_corners=False, antialias=mode == "timm")
    else:
        raise ValueError(f"unknown position resampling {mode!r}")
    table = table.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([prefix, table], dim=1)


class VisionTransformer(nn.Module):
    """A ViT with LayerScale, registers and SwiGLU options: (B, 3, H, W) → features (B, ``dim``)."""

    def __init__(self, config: ViTConfig = ViTConfig()):
        super().__init__()
        c = self.config = config
        d = c.embed_dim
        self.dim = c.dim
        self.patch = c.patch
        self.num_prefix_tokens = c.num_prefix_tokens
        self.patch_embed = PatchEmbed(c.patch, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if c.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, c.reg_tokens, d))
        else:
            self.reg_token = None
        positions = c.grid ** 2 + (0 if c.no_embed_class else c.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.randn(1, positions, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, c.heads, c.mlp_ratio, mlp=c.mlp, init_values=c.init_values) for _ in range(c.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def _positions(self, grid: int) -> torch.Tensor:
        prefix = 0 if self.config.no_embed_class else self.num_prefix_tokens
        return resample_positions(self.pos_embed, grid, prefix, self.config.pos_resample)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every output token after the final norm: (B, 1 + registers + N, D), class token first."""
        tokens = self.patch_embed(x)  # (B, N, D)
        b, n = tokens.shape[:2]
        grid = int(math.isqrt(n))
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(b, -1, -1))
        if self.config.no_embed_class:
            tokens = torch.cat(prefix + [tokens + self._positions(grid)], dim=1)
        else:
            tokens = torch.cat(prefix + [tokens], dim=1) + self._positions(grid)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return read_out(self.forward_tokens(x), self.config.readout, self.num_prefix_tokens)


class ViTSmall16(VisionTransformer):
    """ViT-S/16 (timm's ``vit_small_patch16_224``): (B, 3, H, W) → class token (B, 384)."""

    dim = 384

    def __init__(self, img_size: int = 224, patch: int = 16, depth: int = 12, heads: int = 6):
        super().__init__(ViTConfig(embed_dim=384, depth=depth, heads=heads, patch=patch, img_size=img_size))
