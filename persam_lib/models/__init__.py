"""Models that read a bag of patch features, some together with the clinical record.

`create_model(name, config)` builds a registered model; every model returns `ModelOutput`.
`MODEL_INFO[name]` says what a model reads, so tools and tests can treat all models alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from persam_lib.models.abmil import ABMIL
from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.chexradinet import ChexRadiNet
from persam_lib.models.clinical_only import ClinicalOnly
from persam_lib.models.concat import ConcatFusion
from persam_lib.models.mma_mgmu import MMAMGMU
from persam_lib.models.persam import PersAM
from persam_lib.models.transmil import TransMIL


@dataclass(frozen=True)
class ModelInfo:
    """What a model reads and what it can show."""

    build: Callable[[ModelConfig], nn.Module]
    reads_image: bool
    reads_record: bool
    record_steers_attention: bool  # does the record change the attention over patches?
    description: str


MODEL_INFO: dict[str, ModelInfo] = {
    "persam": ModelInfo(PersAM, True, True, True, "PersAM: Transformer over patch and clinical-field tokens"),
    "mma_mgmu": ModelInfo(MMAMGMU, True, True, True, "EHR-guided attention + multi-head gated multimodal unit"),
    "chexradinet": ModelInfo(ChexRadiNet, True, False, False, "triplet attention + radiomics of the attended region fed back"),
    "concat": ModelInfo(ConcatFusion, True, True, False, "ABMIL embedding concatenated with a record MLP"),
    "abmil": ModelInfo(ABMIL, True, False, False, "gated attention MIL, image only"),
    "transmil": ModelInfo(TransMIL, True, False, False, "TransMIL-style Transformer, image only"),
    "clinical_only": ModelInfo(ClinicalOnly, False, True, False, "MLP over the record, no image"),
}
READS_RECORD = {name: info.reads_record for name, info in MODEL_INFO.items()}


def available_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(MODEL_INFO)


def create_model(name: str, config: ModelConfig) -> nn.Module:
    """Build the model registered under ``name``; an unknown name lists the valid ones."""
    if name not in MODEL_INFO:
        raise ValueError(f"Unknown model '{name}'. Available models: {', '.join(available_models())}.")
    return MODEL_INFO[name].build(config)


__all__ = ["Batch", "ModelConfig", "ModelInfo", "ModelOutput", "MODEL_INFO", "READS_RECORD", "available_models", "create_model"]
