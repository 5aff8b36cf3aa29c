"""Patch encoders, looked up by name: `create_encoder("stats")`, `create_encoder("uni", weights=PATH)`.

Every encoder maps a batch of RGB patches (B, S, S, 3) uint8 to features (B, D) float32 and
carries a `name` and `dim`, which are written into each feature file. The registry holds:

- ``stats``: hand-made colour, stain and texture statistics (no weights);
- ``resnet50_trunc``, ``vit_s16``: the usual baselines, weights from a local torchvision / timm file;
- the foundation-model presets ``uni``, ``uni2_h``, ``virchow2``, ``h_optimus_0``,
  ``prov_gigapath``, ``conch_v1_5`` (`persam_lib.features.presets`: architecture, read-out,
  preprocessing and dimension of each), weights from a local file;
- ``hf:<folder>``: a transformers vision model saved with ``save_pretrained``
  (`persam_lib.features.hf_encoder`), e.g. Phikon or Phikon-v2;
- ``timm:<model>``: any timm model, when ``import timm`` really works here.

Nothing is ever downloaded: weights come from files the user names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed


class Encoder(Protocol):
    name: str
    dim: int

    def __call__(self, patches: np.ndarray) -> np.ndarray: ...


@dataclass
class StatsEncoder:
    """The fast default: colour, stain (haematoxylin/eosin) and texture statistics of each patch.

    Needs no weights. Texture comes from difference-of-Gaussians energy of the haematoxylin
    channel at three scales, which responds to nuclear size and crowding, plus the fraction of
    strongly haematoxylin-stained pixels; all operations are vectorised over the batch.
    Patches are reduced by 2 before texture, which keeps nuclei resolvable at 0.5 mpp.
    """

    name: str = "stats"
    dim: int = 26

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        if patches.ndim != 4 or patches.shape[-1] != 3:
            raise ValueError(f"expected patches (B, S, S, 3), got {patches.shape}")
        b, s = patches.shape[0], patches.shape[1]
        rgb = patches.astype(np.float32) / 255.0
        rgb = rgb[:, : s // 2 * 2, : s // 2 * 2].reshape(b, s // 2, 2, s // 2, 2, 3).mean(axis=(2, 4))
        hed = rgb2hed(rgb.reshape(-1, s // 2, 3)).reshape(rgb.shape).astype(np.float32)
        haem, eosin = hed[..., 0], hed[..., 1]
        grey = rgb.mean(-1)
        flat = lambda a: a.reshape(b, -1)  # noqa: E731
        feats = [
            flat(rgb[..., 0]).mean(1), flat(rgb[..., 1]).mean(1), flat(rgb[..., 2]).mean(1),
            flat(rgb[..., 0]).std(1), flat(rgb[..., 1]).std(1), flat(rgb[..., 2]).std(1),
            flat(haem).mean(1) * 10, flat(haem).std(1) * 10, flat(eosin).mean(1) * 10, flat(eosin).std(1) * 10,
            (flat(grey) > 0.9).mean(1),  # background / glass
        ]
        for q in (0.05, 0.1, 0.15):
            feats.append((flat(haem) > q).mean(1))  # nuclear area fraction at three thresholds
        smoothed = [ndimage.gaussian_filter(haem, sigma=(0, sg, sg)) for sg in (0.7, 1.5, 3.0, 6.0)]
        for fine, coarse in zip(smoothed[:-1], smoothed[1:]):
            dog = fine - coarse
            feats.append(flat(np.abs(dog)).mean(1) * 100)
            feats.append(flat(np.maximum(dog, 0)).std(1) * 100)
        gy, gx = np.gradient(grey, axis=(1, 2))
        grad = np.hypot(gx, gy)
        feats += [flat(grad).mean(1) * 10, flat(grad).std(1) * 10]
        q10, q50, q90 = np.quantile(flat(grey), [0.1, 0.5, 0.9], axis=1)
        feats += [q10, q50, q90, flat(haem).max(1) * 5]
        out = np.stack(feats, axis=1).astype(np.float32)
        assert out.shape[1] == self.dim, out.shape
        return out


def _torch_encoder(name: str, build: Callable[[], "object"], ignore_prefixes: tuple[str, ...] = ()) -> Callable[..., Encoder]:
    """A factory for a PyTorch encoder whose weights come from a local file."""

    def factory(weights: str | None = None, random_init: bool = False, device: str | None = None) -> Encoder:
        from persam_lib.features.torch_encoder import TorchEncoder, WeightsError, load_weights

        model = build()
        if weights:
            load_weights(model, weights, ignore_prefixes=ignore_prefixes)
        elif not random_init:
            raise WeightsError(
                f"Encoder '{name}' needs weights: pass the path of a local state dict (torchvision / timm layout), "
                f"e.g. `persam extract ... --encoder {name} --weights resnet50.pth`. Nothing is downloaded."
            )
        return TorchEncoder(name, model, model.dim, device)

    return factory


def _resnet50_trunc():
    from persam_lib.features.resnet import ResNet50Trunc

    return ResNet50Trunc()


def _vit_small16():
    from persam_lib.features.vit import ViTSmall16

    return ViTSmall16()


def _preset(name: str) -> Callable[..., Encoder]:
    def factory(weights: str | None = None, random_init: bool = False, device: str | None = None, **options: object) -> Encoder:
        from persam_lib.features.presets import preset_encoder

        return preset_encoder(name, weights, random_init, device, **options)  # type: ignore[arg-type]

    return factory


PRESET_NAMES = ("uni", "uni2_h", "virchow2", "h_optimus_0", "prov_gigapath", "conch_v1_5")

_REGISTRY: dict[str, Callable[..., Encoder]] = {
    "stats": StatsEncoder,
    "resnet50_trunc": _torch_encoder("resnet50_trunc", _resnet50_trunc, ignore_prefixes=("layer4.", "fc.")),
    "vit_s16": _torch_encoder("vit_s16", _vit_small16, ignore_prefixes=("head.", "fc_norm.")),
    **{name: _preset(name) for name in PRESET_NAMES},
}


def available_encoders() -> list[str]:
    """Names `create_encoder` accepts: the registry, ``hf:<folder>``, and ``timm:<model name>`` when timm imports."""
    from persam_lib.features.timm_backend import timm_available

    return sorted([*_REGISTRY, "hf:<folder>"] + (["timm:<model name>"] if timm_available() else []))


def create_encoder(name: str, **kwargs: object) -> Encoder:
    """Build the encoder registered under ``name``; an unknown name lists the valid ones.

    ``stats`` needs no weights; ``resnet50_trunc``, ``vit_s16`` and the presets take
    ``weights=PATH`` (a local state dict: .pth/.pt/.bin or .safetensors); ``hf:<folder>`` reads
    the model, its read-out and preprocessing from the folder (``weights`` must stay empty);
    ``timm:<model>`` builds a timm model from ``weights=PATH`` when timm can be imported.
    """
    if name.startswith("hf:"):
        if kwargs.get("weights"):
            raise ValueError(f"'{name}' reads its weights from the folder; drop --weights.")
        from persam_lib.features.hf_encoder import hf_encoder

        return hf_encoder(name, device=kwargs.get("device"))  # type: ignore[arg-type]
    if name.startswith("timm:"):
        from persam_lib.features.timm_backend import timm_import_error

        problem = timm_import_error()
        if problem:
            raise ValueError(
                f"Encoder '{name}' needs timm, which cannot be imported here ({problem}). "
                f"The presets ({', '.join(PRESET_NAMES)}) and hf:<folder> work without it."
            )
        return _timm_encoder(name.removeprefix("timm:"), **kwargs)  # type: ignore[arg-type]
    if name not in _REGISTRY:
        raise ValueError(f"Unknown encoder '{name}'. Available encoders: {', '.join(available_encoders())}.")
    if name == "stats" and kwargs.get("weights"):
        raise ValueError("The 'stats' encoder has no weights; drop --weights or choose another encoder.")
    return _REGISTRY[name](**{k: v for k, v in kwargs.items() if name != "stats"})


def _timm_encoder(model_name: str, weights: str | None = None, random_init: bool = False, device: str | None = None) -> Encoder:
    import timm

    from persam_lib.features.torch_encoder import TorchEncoder, WeightsError

    if not weights and not random_init:
        raise WeightsError(f"Encoder 'timm:{model_name}' needs weights: pass a local checkpoint path; nothing is downloaded.")
    model = timm.create_model(model_name, pretrained=False, num_classes=0, checkpoint_path=weights or "")
    return TorchEncoder(f"timm:{model_name}", model, int(model.num_features), device)
