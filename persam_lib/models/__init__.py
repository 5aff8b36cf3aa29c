"""Models that read a slide's bag of patch features or a 2-D image, most together with the clinical record.

`create_model(name, config)` builds a registered model for the input named by
``config.input_kind`` ("features" for slides, "image" for 2-D images); every model returns
`ModelOutput`, with attention over patches (of a slide's tissue, or of the image's patch grid,
see `persam_lib.models.cnn`). `MODEL_INFO[name]` says what a model reads, which inputs it
takes and which `ModelSettings` it reads on each, so tools and tests can treat all models alike
and a setting the chosen model ignores is refused (`check_settings`) instead of silently dropped.

To add a model: one file in this folder whose class takes a `ModelConfig` and returns
`ModelOutput`, and one `MODEL_INFO` entry naming its builders and the settings it reads.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

from persam_lib.models.abmil import ABMIL
from persam_lib.models.base import Batch, ModelConfig, ModelOutput, ModelSettings
from persam_lib.models.chexradinet import ChexRadiNet, ChexRadiNetImage
from persam_lib.models.clinical_only import ClinicalOnly
from persam_lib.models.cnn import ConvBackbone, ImageModel, PatchGridEncoder
from persam_lib.models.concat import ConcatFusion
from persam_lib.models.mma_mgmu import MMAMGMU, MMAMGMUImage
from persam_lib.models.persam import PersAM
from persam_lib.models.persam_paper import PersAMPaper
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
    uses: frozenset[str] = frozenset()  # the `ModelSettings` it reads on bags of patch features (slides)
    uses_on_images: frozenset[str] = frozenset()  # the `ModelSettings` it reads on 2-D images
    class_maps: bool = False  # does it return one patch map per class (`ModelOutput.class_patch_attention`)?

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input kinds (`ModelConfig.input_kind`) the model is built for."""
        return tuple(kind for kind, build in (("features", self.build), ("image", self.build_image)) if build is not None)

    def settings_read(self, input_kind: str) -> frozenset[str]:
        """The settings the model reads when built for ``input_kind`` ("features" or "image")."""
        return self.uses_on_images if input_kind == "image" else self.uses


def on_stem(stem: Callable[[int, int, int], nn.Module], bag_model: Builder, name: str) -> Builder:
    """Build ``bag_model`` (registered as ``name``) over the patch tokens an image ``stem`` makes
    (`PatchGridEncoder`: each patch on its own; `ConvBackbone`: the cells of a whole-image CNN)."""

    def build(config: ModelConfig) -> nn.Module:
        encoder = stem(config.feature_dim, config.d_model, config.grid_cell)
        inner = bag_model(replace(config, feature_dim=encoder.out_dim, input_kind="features"))
        return ImageModel(encoder, inner, config, name)

    return build


def on_patch_grid(bag_model: Builder, name: str) -> Builder:
    """Build ``bag_model`` over an image's patch grid, each patch encoded on its own (`PatchGridEncoder`)."""
    return on_stem(PatchGridEncoder, bag_model, name)


def on_cnn_cells(bag_model: Builder, name: str) -> Builder:
    """Build ``bag_model`` over the cells of a whole-image CNN's last feature map (`ConvBackbone`)."""
    return on_stem(ConvBackbone, bag_model, name)


# The settings each model reads (`ModelSettings`), checked by tests/test_configs.py: changing a
# setting a model does not list must leave it unchanged.
_EMBED = frozenset({"d_model", "dropout"})  # every model: embedding width, dropout
_PERSAM = _EMBED | {"n_heads", "n_layers", "mlp_ratio", "use_position", "patch_attention", "checkpoint_activations", "record_tokens", "class_token_reads"}
_TRANSMIL = _EMBED | {"n_heads", "mlp_ratio"}  # two Transformer layers, fixed
_MMA = _EMBED | {"n_heads"}
_CHEX = _EMBED | {"radiomics_iterations", "region_fraction"}
_PIXELS = frozenset({"image_size", "grid_cell"})  # every model that reads an image's pixels
_PERSAM_PAPER = _EMBED | {"n_heads", "n_layers", "mlp_ratio", "norm"}

MODEL_INFO: dict[str, ModelInfo] = {
    "persam": ModelInfo(PersAM, True, True, True, "PersAM: Transformer over patch and clinical-field tokens", build_image=on_patch_grid(PersAM, "persam"), uses=_PERSAM, uses_on_images=_PERSAM | _PIXELS),
    "persam_paper": ModelInfo(PersAMPaper, True, True, True, "PersAM as published: class token per class, record groups, balanced attention, sigmoid multimodal aggregator", uses=_PERSAM_PAPER, class_maps=True),
    "mma_mgmu": ModelInfo(MMAMGMU, True, True, True, "EHR-guided attention + multi-head gated multimodal unit", build_image=MMAMGMUImage, uses=_MMA, uses_on_images=_MMA | _PIXELS | {"ehr_stages"}),
    "chexradinet": ModelInfo(ChexRadiNet, True, False, False, "triplet attention + radiomics of the attended region fed back", build_image=ChexRadiNetImage, uses=_CHEX, uses_on_images=_CHEX | _PIXELS),
    "concat": ModelInfo(ConcatFusion, True, True, False, "ABMIL embedding concatenated with a record MLP", build_image=on_patch_grid(ConcatFusion, "concat"), uses=_EMBED, uses_on_images=_EMBED | _PIXELS),
    "abmil": ModelInfo(ABMIL, True, False, False, "gated attention MIL, image only", build_image=on_patch_grid(ABMIL, "abmil"), uses=_EMBED, uses_on_images=_EMBED | _PIXELS),
    "transmil": ModelInfo(TransMIL, True, False, False, "TransMIL-style Transformer, image only", build_image=on_patch_grid(TransMIL, "transmil"), uses=_TRANSMIL, uses_on_images=_TRANSMIL | _PIXELS),
    "cnn": ModelInfo(None, True, False, False, "plain CNN with attention pooling over its last feature map, image only", build_image=on_cnn_cells(ABMIL, "cnn"), uses_on_images=_EMBED | _PIXELS),
    "cnn_concat": ModelInfo(None, True, True, False, "the plain CNN's embedding concatenated with a record MLP", build_image=on_cnn_cells(ConcatFusion, "cnn_concat"), uses_on_images=_EMBED | _PIXELS),
    "clinical_only": ModelInfo(ClinicalOnly, False, True, False, "MLP over the record, no image", build_image=ClinicalOnly, uses=_EMBED, uses_on_images=_EMBED),
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


def class_map_models() -> list[str]:
    """The models that return one patch map per class (`ModelOutput.class_patch_attention`)."""
    return [name for name, info in MODEL_INFO.items() if info.class_maps]


def _input_name(input_kind: str) -> str:
    return "2-D images" if input_kind == "image" else "slides"


def readers_of(setting: str, input_kind: str) -> list[str]:
    """The models that read ``setting`` when built for ``input_kind``."""
    return [m for m in available_models(input_kind) if setting in MODEL_INFO[m].settings_read(input_kind)]


def check_settings(models: str | list[str], settings: ModelSettings, input_kind: str) -> None:
    """Raise a ValueError when ``settings`` change (from their defaults) a setting that the model
    (or none of the ``models`` of a comparison) reads on ``input_kind``: it would be silently
    ignored. The message names each such setting, the model(s), and the models that do read it.
    Defaults never raise."""
    names = [models] if isinstance(models, str) else list(models)
    ignored = [s for s in settings.changed() if not any(s in MODEL_INFO[m].settings_read(input_kind) for m in names)]
    if ignored:
        who = names[0] if len(names) == 1 else f"none of {', '.join(names)}"
        verb = "does not read" if len(names) == 1 else "reads"
        parts = [f"'{s}' ({_who_reads(s, input_kind)})" for s in ignored]
        raise ValueError(
            f"{who} on {_input_name(input_kind)} {verb} the model setting(s) {'; '.join(parts)}, so the value would be silently ignored. "
            f"Remove {' and '.join(f'{s}=' for s in ignored)} from --set / --config, or choose a model that reads it."
        )


def _who_reads(setting: str, input_kind: str) -> str:
    """Who reads ``setting``, for a message: the models on ``input_kind``, or on the other input kind."""
    here = readers_of(setting, input_kind)
    if here:
        return f"read by {', '.join(here)}"
    other = "features" if input_kind == "image" else "image"
    there = readers_of(setting, other)
    return f"read only on {_input_name(other)}, by {', '.join(there)}" if there else "read by no model"


def settings_for(name: str, settings: ModelSettings, input_kind: str) -> ModelSettings:
    """``settings`` with every setting model ``name`` does not read on ``input_kind`` back at its
    default: what one model of a comparison gets from the settings shared by all of them."""
    read = MODEL_INFO[name].settings_read(input_kind)
    return replace(settings, **{s: ModelSettings.__dataclass_fields__[s].default for s in settings.changed() if s not in read})


__all__ = ["Batch", "ModelConfig", "ModelInfo", "ModelOutput", "ModelSettings", "MODEL_INFO", "READS_RECORD", "available_models", "check_settings", "class_map_models", "create_model", "readers_of", "settings_for"]
