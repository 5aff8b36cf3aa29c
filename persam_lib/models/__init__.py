"""Models that read a slide's bag of patch features or a 2-D image, most together with the clinical record.

`create_model(name, config)` builds a registered model for the input named by
``config.input_kind`` ("features" for slides, "image" for 2-D images); every model returns
`ModelOutput`, with attention over patches (of a slide's tissue, or of the image's patch grid,
see `persam_lib.models.cnn`). `MODEL_INFO[name]` says what a model reads and which inputs it
takes, so tools and tests can treat all models alike.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

from persam_lib.models.abmil import ABMIL
from persam_lib.models.base import Batch, ModelConfig, ModelOutput
from persam_lib.models.chexradinet import ChexRadiNet, ChexRadiNetImage
from persam_lib.models.clinical_only import ClinicalOnly
from persam_lib.models.cnn import ConvBackbone, ImageModel, PatchGridEncoder
from persam_lib.models.concat import ConcatFusion
from persam_lib.models.mma_mgmu import MMAMGMU, MMAMGMUImage
from persam_lib.models.persam import PersAM
from persam_lib.models.transmil import TransMIL


Builder = Callable[[ModelConfig], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What a model reads and what it can show, and how it is built for each kind of input."""

    build: Builder | None  # for bags of patch features (slides); None: images only
    reads_image: bool
    reads_record: bool
    record_steers_attention: bool  # does the record change the attention over patches?
    description: str
    build_image: Builder | None = None  # for 2-D images; None: slides only

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input kinds (`ModelConfig.input_kind`) the model is built for."""
        return tuple(kind for kind, build in (("features", self.build), ("image", self.build_image)) if build is not None)


def on_stem(stem: Callable[[int, int, int], nn.Module], bag_model: Builder, name: str) -> Builder:
    """Build ``bag_model`` (registered as ``name``) over the patch tokens an image ``stem`` makes
    (`PatchGridEncoder`: each patch on its own; `ConvBackbone`: the cells of a whole-image CNN)."""

    def build(config: ModelConfig) -> nn.Module:
        encoder = stem(config.feature_dim, config.d_model, config.patch_size)
        inner = bag_model(replace(config, feature_dim=encoder.out_dim, input_kind="features"))
        return ImageModel(encoder, inner, config, name)

    return build


def on_patch_grid(bag_model: Builder, name: str) -> Builder:
    """Build ``bag_model`` over an image's patch grid, each patch encoded on its own (`PatchGridEncoder`)."""
    return on_stem(PatchGridEncoder, bag_model, name)


def on_cnn_cells(bag_model: Builder, name: str) -> Builder:
    """Build ``bag_model`` over the cells of a whole-image CNN's last feature map (`ConvBackbone`)."""
    return on_stem(ConvBackbone, bag_model, name)


MODEL_INFO: dict[str, ModelInfo] = {
    "persam": ModelInfo(PersAM, True, True, True, "PersAM: Transformer over patch and clinical-field tokens", build_image=on_patch_grid(PersAM, "persam")),
    "mma_mgmu": ModelInfo(MMAMGMU, True, True, True, "EHR-guided attention + multi-head gated multimodal unit", build_image=MMAMGMUImage),
    "chexradinet": ModelInfo(ChexRadiNet, True, False, False, "triplet attention + radiomics of the attended region fed back", build_image=ChexRadiNetImage),
    "concat": ModelInfo(ConcatFusion, True, True, False, "ABMIL embedding concatenated with a record MLP", build_image=on_patch_grid(ConcatFusion, "concat")),
    "abmil": ModelInfo(ABMIL, True, False, False, "gated attention MIL, image only", build_image=on_patch_grid(ABMIL, "abmil")),
    "transmil": ModelInfo(TransMIL, True, False, False, "TransMIL-style Transformer, image only", build_image=on_patch_grid(TransMIL, "transmil")),
    "cnn": ModelInfo(None, True, False, False, "plain CNN with attention pooling over its last feature map, image only", build_image=on_cnn_cells(ABMIL, "cnn")),
    "cnn_concat": ModelInfo(None, True, True, False, "the plain CNN's embedding concatenated with a record MLP", build_image=on_cnn_cells(ConcatFusion, "cnn_concat")),
    "clinical_only": ModelInfo(ClinicalOnly, False, True, False, "MLP over the record, no image", build_image=ClinicalOnly),
}
READS_RECORD = {name: info.reads_record for name, info in MODEL_INFO.items()}


def available_models(input_kind: str | None = None) -> list[str]:
    """Names `create_model` accepts (for ``input_kind`` "features" or "image", or for either)."""
    return sorted(name for name, info in MODEL_INFO.items() if input_kind is None or input_kind in info.inputs)


def create_model(name: str, config: ModelConfig) -> nn.Module:
    """Build the model registered under ``name`` for ``config.input_kind``; an unknown name, or a
    model that does not take that input, is an error listing the valid ones."""
    if name not in MODEL_INFO:
        raise ValueError(f"Unknown model '{name}'. Available models: {', '.join(available_models())}.")
    info = MODEL_INFO[name]
    build = info.build_image if config.input_kind == "image" else info.build
    if build is None:
        what = "2-D images" if config.input_kind == "image" else "slides (bags of patch features)"
        raise ValueError(f"Model '{name}' does not run on {what}. Models for {what}: {', '.join(available_models(config.input_kind))}.")
    return build(config)


__all__ = ["Batch", "ModelConfig", "ModelInfo", "ModelOutput", "MODEL_INFO", "READS_RECORD", "available_models", "create_model"]
