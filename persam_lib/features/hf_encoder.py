"""``hf:<folder>``: a Hugging Face transformers vision model saved with ``save_pretrained``, as a patch encoder.

The folder holds ``config.json`` and the weights (``model.safetensors`` or ``pytorch_model.bin``),
and often ``preprocessor_config.json``: what ``model.save_pretrained(folder)`` and
``processor.save_pretrained(folder)`` write, or a model repository downloaded by the user (Phikon:
a ``ViTModel``; Phikon-v2: a ``Dinov2Model``; DINOv2 with registers: ``Dinov2WithRegistersModel``).
It is loaded with ``AutoModel.from_pretrained(folder, local_files_only=True)``: nothing is
downloaded and no code from the folder runs (``trust_remote_code`` stays off).

- Loading is strict: a weight the model needs that the folder lacks, or one of the wrong shape, is a
  `WeightsError` naming it (the unused pooler and classifier heads aside).
- Read-out (`persam_lib.features.readout`): the class token by default for every supported model
  type — what the Phikon and Phikon-v2 model cards use; ``hf:<folder>@cls+mean`` gives class token ⊕
  mean of the patch tokens (registers excluded), the DINOv2 linear-probe convention.
- Preprocessing from ``preprocessor_config.json`` when present (resize, centre crop, interpolation,
  mean/std); otherwise ImageNet mean/std and a resize to the model config's ``image_size``.
- ``dim`` is ``hidden_size`` (twice that with ``cls+mean``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from persam_lib.features.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from persam_lib.features.readout import READOUTS, Readout, check_readout, read_out, readout_dim
from persam_lib.features.torch_encoder import TorchEncoder, WeightsError

# model_type in config.json → (default read-out, interpolation when no preprocessor_config.json says)
SUPPORTED_TYPES: dict[str, tuple[Readout, str]] = {
    "vit": ("cls", "bilinear"),  # ViTModel (Phikon)
    "dinov2": ("cls", "bicubic"),  # Dinov2Model (Phikon-v2)
    "dinov2_with_registers": ("cls", "bicubic"),  # Dinov2WithRegistersModel
}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resampling codes used by transformers' image processors
_HEADS = ("pooler", "classifier", "head")  # weights of heads a feature read-out never uses


def parse_hf_name(name: str) -> tuple[Path, Readout | None]:
    """``hf:<folder>`` or ``hf:<folder>@<read-out>`` → (folder, read-out or None for the model's default)."""
    spec = name.removeprefix("hf:")
    if not spec:
        raise ValueError("'hf:' needs a folder: --encoder hf:/path/to/model (a folder written by save_pretrained).")
    head, sep, tail = spec.rpartition("@")
    if sep and tail in READOUTS and not Path(spec).exists():
        return Path(head), tail  # type: ignore[return-value]
    return Path(spec), None


def read_model_type(folder: Path) -> tuple[str, dict[str, Any]]:
    """The folder's ``model_type`` and config; a folder that holds no supported vision model is a
    `WeightsError` naming the folder and what to put there."""
    hint = "Save the model there with model.save_pretrained(folder) (a ViTModel, Dinov2Model or Dinov2WithRegistersModel), or download its repository into it."
    if not folder.is_dir():
        raise WeightsError(f"hf:{folder}: not a folder on this machine. Nothing is downloaded: {hint}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"hf:{folder}: has no config.json, so it is not a saved transformers model. {hint}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{config_path}: could not be read as JSON ({err}). {hint}") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_TYPES:
        raise WeightsError(
            f"hf:{folder}: config.json names model_type {model_type!r}, which is not a vision model we can encode patches with; "
            f"supported: {', '.join(SUPPORTED_TYPES)}. {hint}"
        )
    return model_type, config


def _side(value: Any, where: str) -> int | None:
    """A square side from an image processor's ``size`` / ``crop_size`` entry."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise WeightsError(f"{where}: a {value['height']}x{value['width']} input is not square; patches are square.")
            return int(value["height"])
        for key in ("shortest_edge", "longest_edge"):
            if key in value:
                return int(value[key])
    raise WeightsError(f"{where}: cannot read the image size {value!r}.")


def read_preprocess(folder: Path, model_type: str, config: dict[str, Any]) -> Preprocess:
    """The model's preprocessing: from ``preprocessor_config.json`` when the folder has one, else
    ImageNet mean/std and a resize to ``config.json``'s ``image_size``."""
    interpolation = SUPPORTED_TYPES[model_type][1]
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        size = config.get("image_size", 224)
        side = _side({"height": size[0], "width": size[-1]} if isinstance(size, (list, tuple)) else size, str(folder / "config.json"))
        return Preprocess(resize=side, interpolation=interpolation)  # type: ignore[arg-type]
    try:
        proc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path}: could not be read as JSON ({err}).") from err
    rescale = proc.get("rescale_factor", 1 / 255) if proc.get("do_rescale", True) else 1.0
    if abs(rescale - 1 / 255) > 1e-9:
        raise WeightsError(f"{path}: rescale_factor {rescale} is not 1/255; 8-bit patches cannot be prepared this way.")
    resample = proc.get("resample")
    if resample is not None:
        if resample not in _RESAMPLE:
            raise WeightsError(f"{path}: resample {resample} is not bilinear (2) or bicubic (3).")
        interpolation = _RESAMPLE[resample]
    normalize = proc.get("do_normalize", True)
    mean = tuple(proc.get("image_mean", IMAGENET_MEAN)) if normalize else (0.0, 0.0, 0.0)
    std = tuple(proc.get("image_std", IMAGENET_STD)) if normalize else (1.0, 1.0, 1.0)
    resize = _side(proc.get("size"), str(path)) if proc.get("do_resize", True) else None
    crop = _side(proc.get("crop_size"), str(path)) if proc.get("do_center_crop", False) else None
    return Preprocess(mean=mean, std=std, resize=resize, crop=crop, interpolation=interpolation)  # type: ignore[arg-type]


class HFTokens(nn.Module):
    """A transformers vision model read out from ``last_hidden_state``: (B, 3, H, W) → (B, ``dim``)."""

    def __init__(self, model: nn.Module, readout: Readout, num_prefix_tokens: int, model_type: str):
        super().__init__()
        self.model = model
        self.readout = readout
        self.num_prefix_tokens = num_prefix_tokens
        self.kwargs = {"interpolate_pos_encoding": True} if model_type == "vit" else {}  # DINOv2 always interpolates
        self.dim = readout_dim(int(model.config.hidden_size), readout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=x, **self.kwargs).last_hidden_state  # (B, 1 + registers + N, D)
        return read_out(tokens, self.readout, self.num_prefix_tokens)


def load_hf_model(folder: str | Path, readout: Readout | None = None) -> tuple[HFTokens, Preprocess]:
    """The model in ``folder`` (strictly loaded, offline) with its read-out, and its preprocessing."""
    folder = Path(folder)
    model_type, config = read_model_type(folder)
    readout = check_readout(readout or SUPPORTED_TYPES[model_type][0])
    from transformers import AutoModel

    extra = {"add_pooling_layer": False} if model_type == "vit" else {}
    try:
        model, info = AutoModel.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True,
            ignore_mismatched_sizes=True, dtype=torch.float32, **extra,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise WeightsError(f"hf:{folder}: the model could not be loaded from the folder ({err}).") from err
    used = lambda key: not set(str(key).split(".")) & set(_HEADS)  # noqa: E731
    mismatched = sorted(info.get("mismatched_keys", ()), key=lambda m: str(m[0]))
    if mismatched:
        key, stored, expected = mismatched[0]
        raise WeightsError(f"hf:{folder}: '{key}' has shape {tuple(stored)} but the model expects {tuple(expected)}; is this the right architecture?")
    missing = sorted(k for k in info.get("missing_keys", ()) if used(k))
    if missing:
        raise WeightsError(f"hf:{folder}: {len(missing)} weight(s) the model needs are missing from the folder, e.g. {missing[:3]}; is this the right architecture?")
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if used(k))
    if unexpected:
        raise WeightsError(f"hf:{folder}: {len(unexpected)} weight(s) the model does not have, e.g. {unexpected[:3]}; is this the right architecture?")
    prefix = 1 + int(config.get("num_register_tokens", 0) if model_type == "dinov2_with_registers" else 0)
    return HFTokens(model, readout, prefix, model_type), read_preprocess(folder, model_type, config)


def hf_encoder(name: str, device: str | None = None) -> TorchEncoder:
    """The encoder ``hf:<folder>[@read-out]``; its ``name`` is ``name`` as given."""
    folder, readout = parse_hf_name(name)
    model, preprocess = load_hf_model(folder, readout)
    return TorchEncoder(name, model, model.dim, device, preprocess)
