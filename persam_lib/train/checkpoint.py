"""Checkpoints that rebuild themselves: weights + model config + record encoder + feature normaliser.

The checkpoint stores the `ModelConfig` (model settings and what the data decided) by name, so a
model rebuilds from it alone; one written before a setting was renamed (``patch_size``, now
``grid_cell``) loads unchanged (`ModelConfig.from_dict`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from persam_lib.io.atomic import atomic_path
from persam_lib.models import create_model
from persam_lib.models.base import ModelConfig
from persam_lib.models.clinical import RecordEncoder
from persam_lib.train.data import FeatureNormaliser


@dataclass
class LoadedModel:
    """A trained model with everything needed to feed it new bags and records."""

    name: str
    model: nn.Module
    config: ModelConfig
    record_encoder: RecordEncoder
    normaliser: FeatureNormaliser


def save_checkpoint(path: str | Path, loaded: LoadedModel, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model_name": loaded.name,
        "model_config": loaded.config.to_dict(),
        "state_dict": loaded.model.state_dict(),
        "record_encoder": loaded.record_encoder.state(),
        "normaliser": loaded.normaliser.state(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from a checkpoint, in eval mode."""
    state = torch.load(Path(path), map_location=device, weights_only=False)
    config = ModelConfig.from_dict(state["model_config"])
    model = create_model(state["model_name"], config)
    model.load_state_dict(state["state_dict"])
    model.to(device).eval()
    return LoadedModel(state["model_name"], model, config, RecordEncoder.from_state(state["record_encoder"]), FeatureNormaliser.from_state(state["normaliser"]))
