"""Running a PyTorch image model as a patch encoder, and loading its weights from a local file.

Weights never come from the network: the user names a file (a torchvision / timm state dict, or
a checkpoint holding one under ``state_dict`` or ``model``). Keys are matched exactly; a missing
key or a shape mismatch is an error that names the key, the expected and the found shape.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(ValueError):
    """A weight file does not fit the encoder; the message says which key and how."""


def load_weights(module: nn.Module, path: str | Path, *, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state dict into ``module``; keys under ``ignore_prefixes`` (e.g. a classifier head) are dropped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: the weight file does not exist. Give the path of a local .pth/.pt state dict.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: could not be read as a PyTorch state dict ({err}).") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict.")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith(ignore_prefixes)}
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
    module.load_state_dict(state)


class TorchEncoder:
    """Wraps an image model: uint8 RGB patches (B, S, S, 3) → features (B, D) float32.

    Patches are normalised with ImageNet statistics; runs on CUDA with bf16 autocast when a GPU
    is present, else on CPU in float32.
    """

    def __init__(self, name: str, model: nn.Module, dim: int, device: str | torch.device | None = None):
        self.name = name
        self.dim = dim
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - self._mean) / self._std
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with autocast:
            out = self.model(x)
        return out.float().cpu().numpy()
