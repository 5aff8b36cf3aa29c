"""timm, when it really imports: the check, and a timm ViT built from a `ViTConfig`.

Finding timm on disk is not enough: beside a CPU build of torch, ``import timm`` fails on its
torchvision import (the registry's torchvision wheels are CUDA builds), so the check imports it.
When timm works, presets are built by ``timm.create_model`` with the arguments a `ViTConfig`
stands for — those mahmoodlab/TRIDENT passes for each model — and give the same numbers as our
own `persam_lib.features.vit` module, which is used otherwise.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from persam_lib.features.readout import read_out
from persam_lib.features.vit import ViTConfig


def timm_import_error() -> str | None:
    """Why ``import timm`` fails here (``"ImportError: ..."``), or None when it works."""
    try:
        import timm  # noqa: F401
    except Exception as err:  # an OSError or RuntimeError from torchvision's CUDA build, not only ImportError
        return f"{type(err).__name__}: {err}"
    return None


def timm_available() -> bool:
    """True when ``import timm`` succeeds in this environment (tried, not looked up)."""
    return timm_import_error() is None


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments that build ``config``'s architecture.

    Every option is passed explicitly (LayerScale, registers, position layout, MLP and its
    activation), so a timm architecture's own defaults never override the preset's.
    """
    import timm.layers

    swiglu = config.mlp == "swiglu_packed"
    return {
        "img_size": config.img_size,
        "patch_size": config.patch,
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "num_heads": config.heads,
        "mlp_ratio": config.mlp_ratio,
        "init_values": config.init_values,
        "reg_tokens": config.reg_tokens,
        "no_embed_class": config.no_embed_class,
        "mlp_layer": timm.layers.SwiGLUPacked if swiglu else timm.layers.Mlp,
        "act_layer": nn.SiLU if swiglu else nn.GELU,
        "num_classes": 0,
        "dynamic_img_size": True,
    }


class TimmTokens(nn.Module):
    """A timm ViT read out like ours: its normed tokens (``forward_features``) → (B, ``dim``)."""

    def __init__(self, model: nn.Module, config: ViTConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.dim = config.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)  # (B, prefix + N, D)
        return read_out(tokens, self.config.readout, int(self.model.num_prefix_tokens))


def create_timm_vit(arch: str, config: ViTConfig) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, ...)`` for ``config``; nothing is downloaded."""
    import timm

    return timm.create_model(arch, pretrained=False, **timm_kwargs(config))
