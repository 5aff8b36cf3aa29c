"""Models that read a bag of patch features, some together with the clinical record.

`create_model(name, config)` builds a registered model; every model returns `ModelOutput`.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from persam_lib.models.abmil import ABMIL
from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.persam import PersAM

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "persam": PersAM,
    "abmil": ABMIL,
}
READS_RECORD = {"persam": True, "abmil": False}


def available_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(_REGISTRY)


def create_model(name: str, config: ModelConfig) -> nn.Module:
    """Build the model registered under ``name``; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model '{name}'. Available models: {', '.join(available_models())}.")
    return _REGISTRY[name](config)


__all__ = ["Batch", "ModelConfig", "ModelOutput", "available_models", "create_model", "READS_RECORD"]
