"""The training loop for one fold: AdamW, class weights, label smoothing, early stopping."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from persam_lib.models.base import Batch
from persam_lib.train.data import Bag, FeatureNormaliser, collate
from persam_lib.models.clinical import RecordEncoder


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; saved as ``config.json`` in every run directory."""

    model: str = "persam"
    n_folds: int = 5
    val_fraction: float = 0.2
    epochs: int = 100
    patience: int = 30  # early stopping on validation loss
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dropout: float = 0.1
    use_position: bool = False
    patch_attention: str = "bipartite"  # PersAM: "bipartite" (linear in bag size) or "full" (patches also attend to patches)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (where full precision is both faster and exact)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_batch(bags: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser) -> Batch:
    """Batch of bags with their patients' records (``records`` indexed by patient_id)."""
    rows = records.loc[[b.patient_id for b in bags]]
    return collate([b.features for b in bags], [b.coords for b in bags], rows, encoder, normaliser)


def evaluate(model: nn.Module, bags: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (len(bags), C) in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(bags), batch_size):
            batch = make_batch(bags[start : start + batch_size], records, encoder, normaliser).to(device)
            with autocast(device):
                logits = model(batch).logits
            out.append(torch.softmax(logits.float(), -1).cpu().numpy())
    return np.concatenate(out)


def fit(model: nn.Module, train: list[Bag], val: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser, config: TrainConfig, n_classes: int) -> tuple[nn.Module, pd.DataFrame]:
    """Train ``model`` on ``train``; keep the weights with the lowest validation loss.

    Returns the best model and the per-epoch history (train_loss, val_loss, val_accuracy).
    """
    device = resolve_device(config.device)
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    counts = np.bincount([b.y for b in train], minlength=n_classes).astype(np.float32)
    class_weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / n_classes, device=device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    val_y = np.array([b.y for b in val])
    best_loss, best_state, stale, history = float("inf"), copy.deepcopy(model.state_dict()), 0, []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        losses = []
        for start in range(0, len(order), config.batch_size):
            chunk = [train[i] for i in order[start : start + config.batch_size]]
            batch = make_batch(chunk, records, encoder, normaliser).to(device)
            targets = torch.tensor([b.y for b in chunk], device=device)
            with autocast(device):
                logits = model(batch).logits
            loss = F.cross_entropy(logits.float(), targets, weight=class_weight, label_smoothing=config.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            losses.append(loss.item())
        probs = evaluate(model, val, records, encoder, normaliser, device)
        val_loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-8)), torch.from_numpy(val_y)).item())
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss, "val_accuracy": float((probs.argmax(1) == val_y).mean())})
        if val_loss < best_loss - 1e-4:
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, pd.DataFrame(history)
