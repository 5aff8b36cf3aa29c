"""Running a PyTorch image model as a patch encoder, and loading its weights from a local file.

Weights never come from the network: the user names a file — a state dict saved with
``torch.save`` (.pth / .pt / .bin, read with ``weights_only=True``, optionally under
``state_dict`` or ``model``) or a ``.safetensors`` file. Keys are matched exactly; a missing key,
an extra key or a shape mismatch is an error that names the key, the expected and the found shape.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from persam_lib.features.preprocess import Preprocess, preprocess_patches


class WeightsError(ValueError):
    """A weight file does not fit the encoder; the message says which key and how."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weight file, by key (a leading ``module.`` from DataParallel dropped).

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(...,
    weights_only=True)``, which runs no code from the file. A file that is not a state dict is a
    `WeightsError` that says what it holds.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: the weight file does not exist. Give the path of a local .pth/.pt/.bin/.safetensors state dict.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:
            raise WeightsError(f"{path}: could not be read as a safetensors file ({err}).") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(f"{path}: could not be read as a PyTorch state dict ({err}).") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict.")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{path}: is not a state dict of tensors: '{not_tensors[0]}' holds a {type(state[not_tensors[0]]).__name__}.")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_weights(
    module: nn.Module,
    path: str | Path,
    *,
    ignore_prefixes: tuple[str, ...] = (),
    adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Load a local state dict into ``module`` strictly; keys under ``ignore_prefixes`` (e.g. a
    classifier head) are dropped first, and ``adapt`` (e.g. fitting a stored position grid) may
    reshape the state before the check."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    if adapt is not None:
        state = adapt(state)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise WeightsError(f"{path}: {len(missing)} key(s) the encoder needs are missing, e.g. {missing[:3]}; is this the right architecture?")
    if unexpected:
        raise WeightsError(f"{path}: {len(unexpected)} key(s) the encoder does not have, e.g. {unexpected[:3]}; is this the right architecture?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(f"{path}: '{key}' has shape {tuple(state[key].shape)} but the encoder expects {tuple(tensor.shape)}.")
    module.load_state_dict(state, strict=True)


class TorchEncoder:
    """Wraps an image model: uint8 RGB patches (B, S, S, 3) → features (B, D) float32.

    Patches are resized and normalised by ``preprocess`` (default: ImageNet mean/std at the
    patch's own size); runs on CUDA with bf16 autocast when a GPU is present, else on CPU in float32.
    """

    def __init__(self, name: str, model: nn.Module, dim: int, device: str | torch.device | None = None, preprocess: Preprocess = Preprocess()):
        self.name = name
        self.dim = dim
        self.preprocess = preprocess
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
        x = preprocess_patches(x, self.preprocess)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with autocast:
            out = self.model(x)
        return out.float().cpu().numpy()
