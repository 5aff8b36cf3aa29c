"""Named presets for the pathology foundation models released as timm-layout weight files.

Each preset fixes the architecture (as mahmoodlab/TRIDENT's ``patch_encoder_models/load.py``
builds it), the read-out, the preprocessing and the embedding size; the weights come from a local
file the user downloaded from the model's page (``--weights FILE``). Nothing is downloaded.

The presets::

    | preset | model | architecture | features | preprocessing |
    | ``uni`` | UNI (MahmoodLab) | ViT-L/16, LayerScale | 1024, class token | resize 224, crop 224, ImageNet |
    | ``uni2_h`` | UNI2-h (MahmoodLab) | ViT-H/14, 24 blocks of 1536, SwiGLU, 8 registers | 1536, class token | resize 224, crop 224, ImageNet |
    | ``virchow2`` | Virchow 2 (Paige) | ViT-H/14, SwiGLU, 4 registers | 2560, class ⊕ mean of patch tokens | resize 224 (bicubic), ImageNet |
    | ``h_optimus_0`` | H-optimus-0 (Bioptimus) | ViT-g/14, SwiGLU, 4 registers | 1536, class token | resize 224, H-optimus mean/std |
    | ``prov_gigapath`` | Prov-GigaPath tile encoder | ViT-g/16, SwiGLU | 1536, class token | resize 256 (bicubic), crop 224, ImageNet |
    | ``conch_v1_5`` | CONCH v1.5 (MahmoodLab) | ViT-L/16, LayerScale 1.0, attentional pooler | 768, pooled | resize 448, crop 448, ImageNet |

The timm presets are built with timm when ``import timm`` succeeds, otherwise by our own
`persam_lib.features.vit.VisionTransformer` in timm's key layout; both load the same files
strictly and give the same features. ``tiny()`` keeps every option at toy width and depth, so
tests can check the key layout without building a billion-parameter model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import nn

from persam_lib.features.conch import ConchVisionTower, PoolerConfig
from persam_lib.features.preprocess import Preprocess
from persam_lib.features.timm_backend import TimmTokens, create_timm_vit, timm_import_error
from persam_lib.features.torch_encoder import TorchEncoder, WeightsError, load_weights
from persam_lib.features.vit import ViTConfig, VisionTransformer

Backend = Literal["auto", "timm", "persam"]
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclass(frozen=True)
class FoundationPreset:
    """One released model: its timm architecture name (None: not a timm model), architecture,
    preprocessing, CONCH's pooler where it has one, and the weight file its page ships."""

    name: str
    title: str
    arch: str | None
    vit: ViTConfig
    preprocess: Preprocess
    weights_file: str
    pooler: PoolerConfig | None = None

    @property
    def dim(self) -> int:
        """Length of the feature vector."""
        return self.pooler.width if self.pooler else self.vit.dim

    def tiny(self) -> "FoundationPreset":
        """The same options (patch, image size, MLP kind and ratio, LayerScale, registers, position
        layout, read-out, preprocessing) at width 32 and depth 2: for tests, never for features."""
        vit = replace(self.vit, embed_dim=32, depth=2, heads=2)
        pooler = replace(self.pooler, width=16, heads=2) if self.pooler else None
        return replace(self, name=f"{self.name} (tiny)", vit=vit, pooler=pooler)

    def describe(self) -> str:
        """One line: model, features and preprocessing."""
        return f"{self.title}: {self.dim}-d features; {self.preprocess.describe()}"


def _timm_vit(embed_dim: int, depth: int, heads: int, patch: int, mlp_ratio: float, *, swiglu: bool, reg_tokens: int = 0, no_embed_class: bool = False, readout: str = "cls") -> ViTConfig:
    return ViTConfig(
        embed_dim=embed_dim, depth=depth, heads=heads, patch=patch, img_size=224, mlp_ratio=mlp_ratio,
        mlp="swiglu_packed" if swiglu else "gelu", init_values=1e-5, reg_tokens=reg_tokens,
        no_embed_class=no_embed_class, readout=readout, pos_resample="timm",  # type: ignore[arg-type]
    )


PRESETS: dict[str, FoundationPreset] = {
    p.name: p
    for p in (
        FoundationPreset(
            "uni", "UNI (MahmoodLab/UNI), ViT-L/16", "vit_large_patch16_224",
            _timm_vit(1024, 24, 16, 16, 4.0, swiglu=False),
            Preprocess(resize=224, crop=224), "pytorch_model.bin from MahmoodLab/UNI",
        ),
        FoundationPreset(
            "uni2_h", "UNI2-h (MahmoodLab/UNI2-h), ViT-H/14 with 8 registers", "vit_giant_patch14_224",
            _timm_vit(1536, 24, 24, 14, 2.66667 * 2, swiglu=True, reg_tokens=8, no_embed_class=True),
            Preprocess(resize=224, crop=224), "pytorch_model.bin from MahmoodLab/UNI2-h",
        ),
        FoundationPreset(
            "virchow2", "Virchow 2 (paige-ai/Virchow2), ViT-H/14 with 4 registers", "vit_huge_patch14_224",
            _timm_vit(1280, 32, 16, 14, 5.3375, swiglu=True, reg_tokens=4, readout="cls+mean"),
            Preprocess(resize=224, interpolation="bicubic"), "pytorch_model.bin from paige-ai/Virchow2",
        ),
        FoundationPreset(
            "h_optimus_0", "H-optimus-0 (bioptimus/H-optimus-0), ViT-g/14 with 4 registers", "vit_giant_patch14_reg4_dinov2",
            _timm_vit(1536, 40, 24, 14, 2.66667 * 2, swiglu=True, reg_tokens=4, no_embed_class=True),
            Preprocess(mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD, resize=224), "pytorch_model.bin from bioptimus/H-optimus-0",
        ),
        FoundationPreset(
            "prov_gigapath", "Prov-GigaPath tile encoder (prov-gigapath/prov-gigapath), ViT-g/16", "vit_giant_patch14_dinov2",
            _timm_vit(1536, 40, 24, 16, 5.33334, swiglu=True),
            Preprocess(resize=256, crop=224, interpolation="bicubic"), "pytorch_model.bin from prov-gigapath/prov-gigapath",
        ),
        FoundationPreset(
            "conch_v1_5", "CONCH v1.5 (MahmoodLab/conchv1_5), ViT-L/16 + attentional pooler", None,
            ViTConfig(embed_dim=1024, depth=24, heads=16, patch=16, img_size=224, init_values=1.0, pos_resample="dino"),
            Preprocess(resize=448, crop=448), "pytorch_model_vision.bin from MahmoodLab/conchv1_5",
            pooler=PoolerConfig(width=768, heads=8, queries=1),
        ),
    )
}


@dataclass
class BuiltPreset:
    """A preset's model: ``weights_target`` is the module whose keys the weight file holds,
    ``model`` the one that maps images to features, ``backend`` ``"timm"`` or ``"persam"``."""

    weights_target: nn.Module
    model: nn.Module
    backend: str
    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


def build_preset(preset: FoundationPreset, backend: Backend = "auto") -> BuiltPreset:
    """The preset's model, randomly initialised: with timm when ``backend`` is ``"timm"`` or
    ``"auto"`` and timm imports (and the model is a timm model), else with our own ViT."""
    if backend not in ("auto", "timm", "persam"):
        raise ValueError(f"backend must be 'auto', 'timm' or 'persam', got {backend!r}")
    if preset.pooler is not None:  # CONCH v1.5: its own tower, never a timm model
        tower = ConchVisionTower(preset.vit, preset.pooler)
        return BuiltPreset(tower, tower, "persam", tower.fit_positions)
    use_timm = backend == "timm"
    if backend != "persam" and preset.arch:
        problem = timm_import_error()
        if problem and backend == "timm":
            raise RuntimeError(f"timm cannot be imported here ({problem}); use backend='auto' or 'persam'.")
        use_timm = problem is None
    if use_timm and preset.arch:
        model = create_timm_vit(preset.arch, preset.vit)
        return BuiltPreset(model, TimmTokens(model, preset.vit), "timm")
    vit = VisionTransformer(preset.vit)
    return BuiltPreset(vit, vit, "persam")


def preset_encoder(
    name: str,
    weights: str | None = None,
    random_init: bool = False,
    device: str | None = None,
    *,
    tiny: bool = False,
    backend: Backend = "auto",
) -> TorchEncoder:
    """The encoder for preset ``name`` with weights from the local file ``weights`` (strictly
    loaded), or random weights when ``random_init``; ``tiny`` builds the toy-size twin (tests)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset '{name}'. Presets: {', '.join(sorted(PRESETS))}.")
    preset = PRESETS[name].tiny() if tiny else PRESETS[name]
    if not weights and not random_init:
        raise WeightsError(
            f"Encoder '{name}' ({preset.title}) needs weights: download {preset.weights_file} yourself (its licence needs accepting) "
            f"and pass its path, e.g. `persam extract ... --encoder {name} --weights {preset.weights_file.split()[0]}`. Nothing is downloaded."
        )
    built = build_preset(preset, backend)
    if weights:
        load_weights(built.weights_target, weights, adapt=built.adapt)
    return TorchEncoder(name, built.model, preset.dim, device, preset.preprocess)
