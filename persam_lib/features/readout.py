"""The read-out of a ViT: which of its output tokens becomes a patch's feature vector.

A ViT returns one token per image patch plus *prefix* tokens in front of them: the class token
and, in models trained with registers (DINOv2-reg, Virchow 2, UNI2-h, H-optimus-0), a few
register tokens that carry no position. Two read-outs are in use:

- ``"cls"``: the class token, (B, D) — UNI, UNI2-h, H-optimus-0, Prov-GigaPath, Phikon, Phikon-v2;
- ``"cls+mean"``: the class token ⊕ the mean of the patch tokens, (B, 2D) — Virchow 2, and the
  DINOv2 linear-probe convention. Register tokens are never part of the mean.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

Readout = Literal["cls", "cls+mean"]
READOUTS: tuple[str, ...] = get_args(Readout)


def check_readout(readout: str) -> Readout:
    """``readout`` itself when it is a known read-out, else a `ValueError` listing them."""
    if readout not in READOUTS:
        raise ValueError(f"Unknown read-out {readout!r}; choose one of {', '.join(READOUTS)}.")
    return readout  # type: ignore[return-value]


def readout_dim(width: int, readout: Readout) -> int:
    """Length of the feature vector a read-out gives from tokens of ``width``."""
    return width * (2 if check_readout(readout) == "cls+mean" else 1)


def read_out(tokens: torch.Tensor, readout: Readout, num_prefix_tokens: int) -> torch.Tensor:
    """tokens (B, P + N, D), class token first, then P - 1 registers, then N patch tokens → (B, D or 2D)."""
    cls = tokens[:, 0]  # (B, D)
    if check_readout(readout) == "cls":
        return cls
    return torch.cat([cls, tokens[:, num_prefix_tokens:].mean(dim=1)], dim=-1)  # (B, 2D)
