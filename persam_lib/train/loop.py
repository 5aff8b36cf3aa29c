"""The training loop for one fold: AdamW, class weights, label smoothing, early stopping.

After every epoch the loop saves its whole state (weights, optimiser, random generators, early
stopping, history) to a resume file, so a fold interrupted mid-way continues from its last
finished epoch and ends exactly where an uninterrupted run would (same seed, CPU). Under torchrun
each rank trains on its share of every batch (`persam_lib.train.distributed`).
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from persam_lib.io.atomic import atomic_path
from persam_lib.models.base import Batch
from persam_lib.models.clinical import RecordEncoder
from persam_lib.train.augment import augment_images, epoch_generator
from persam_lib.train.data import Bag, FeatureNormaliser, collate_bags
from persam_lib.train.distributed import Distributed


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; saved as ``config.json`` in every run directory.

    Every field can be set from the command line with ``--set name=value`` or a YAML file given
    to ``--config``; values are checked here, so a bad one fails before any training starts.
    """

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
    checkpoint_activations: bool = False  # recompute Transformer blocks in backward: less memory for deep models and huge bags
    radiomics_iterations: int = 2  # ChexRadiNet: rounds of heatmap -> radiomics -> guidance
    image_size: int = 128  # 2-D images: side of the square model input, in pixels (images are letterboxed into it)
    patch_size: int = 16  # 2-D images: side of the patches attention is over, in model-input pixels (a power of two)
    ehr_stages: str = "3,4"  # MMA-MGMU on 2-D images: CNN stages (1-based) whose spatial attention the record steers
    augment: bool = True  # 2-D images: random horizontal flips and shifts of up to 1/16 of the side while training
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU

    @classmethod
    def for_modality(cls, modality: str, **options) -> "TrainConfig":
        """The defaults for a cohort's ``modality`` ("slides" or "images"), with ``options`` on top.

        2-D images train end to end through a CNN stem, where the slides' learning rate of 3e-3
        is too high for PersAM (a run of the demo radiographs stayed at chance); images start at 1e-3.
        """
        if modality not in ("slides", "images"):
            raise ValueError(f"modality must be 'slides' or 'images', got {modality!r}")
        return cls(**({"lr": 1e-3} if modality == "images" else {}) | options)

    def _stages_fit(self) -> bool:
        """MMA-MGMU's ``ehr_stages`` name stages its image CNN has (checked for that model only)."""
        from persam_lib.models.mma_mgmu import parse_stages

        try:
            parse_stages(self.ehr_stages, self.patch_size.bit_length() - 1 if self.model == "mma_mgmu" else 64)
        except ValueError:
            return False
        return True

    def __post_init__(self) -> None:
        checks = [
            ("n_folds", self.n_folds >= 2, "an int >= 2"),
            ("val_fraction", 0 < self.val_fraction < 1, "a float in (0, 1)"),
            ("epochs", self.epochs >= 1, "an int >= 1"),
            ("patience", self.patience >= 1, "an int >= 1"),
            ("batch_size", self.batch_size >= 1, "an int >= 1"),
            ("lr", self.lr > 0, "a float > 0"),
            ("weight_decay", self.weight_decay >= 0, "a float >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "a float in [0, 1)"),
            ("d_model", self.d_model >= 1 and self.d_model % max(self.n_heads, 1) == 0, f"an int divisible by n_heads ({self.n_heads})"),
            ("n_heads", self.n_heads >= 1, "an int >= 1"),
            ("n_layers", self.n_layers >= 1, "an int >= 1"),
            ("dropout", 0 <= self.dropout < 1, "a float in [0, 1)"),
            ("patch_attention", self.patch_attention in ("bipartite", "full"), "'bipartite' or 'full'"),
            ("radiomics_iterations", self.radiomics_iterations >= 1, "an int >= 1"),
            ("patch_size", self.patch_size >= 4 and self.patch_size & (self.patch_size - 1) == 0, "a power of two >= 4"),
            ("image_size", self.image_size >= 2 * self.patch_size and self.image_size % self.patch_size == 0, f"a multiple of patch_size ({self.patch_size}), at least twice it"),
            ("ehr_stages", self._stages_fit(), f"comma-separated numbers of the CNN's stages, 1 to {self.patch_size.bit_length() - 1} (one per halving of patch_size), like '3,4'"),
            ("device", self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()), "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"The training option '{name}' must be {expected}. Got {getattr(self, name)!r} instead.")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (where full precision is both faster and exact)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimiser(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, as one fused kernel over all parameters where the device supports it (CPU, CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def make_batch(bags: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser) -> Batch:
    """Batch of samples (slides or images) with their patients' records (``records`` indexed by patient_id)."""
    return collate_bags(bags, records.loc[[b.patient_id for b in bags]], encoder, normaliser)


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
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _validation(model: nn.Module, val: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser, device: torch.device, distributed: Distributed) -> tuple[float, float]:
    """Validation loss (mean NLL) and accuracy; under torchrun each rank scores its share and the sums are combined."""
    mine = distributed.share(val)
    nll = correct = 0.0
    if mine:
        probs = evaluate(model, mine, records, encoder, normaliser, device)
        y = np.array([b.y for b in mine])
        nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-8, None)).sum())
        correct = float((probs.argmax(1) == y).sum())
    nll, correct = distributed.sum([nll, correct], device)
    return nll / len(val), correct / len(val)


@dataclass
class _LoopState:
    """Everything that evolves during `fit`, so an interrupted fold resumes exactly where it stopped."""

    epoch: int = 0  # epochs finished
    best_loss: float = float("inf")
    best_state: dict | None = None
    stale: int = 0
    history: list = dataclasses.field(default_factory=list)

    def save(self, path: Path, model: nn.Module, optimiser: torch.optim.Optimizer, generator: torch.Generator) -> None:
        state = {
            **dataclasses.asdict(self),
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: Path, model: nn.Module, optimiser: torch.optim.Optimizer, generator: torch.Generator, device: torch.device) -> "_LoopState":
        state = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(state.pop("model"))
        optimiser.load_state_dict(state.pop("optimiser"))
        generator.set_state(state.pop("generator").cpu())
        torch.set_rng_state(state.pop("torch_rng").cpu())
        cuda_rng = state.pop("cuda_rng")
        if cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_rng])
        return cls(**state)


def fit(
    model: nn.Module,
    train: list[Bag],
    val: list[Bag],
    records: pd.DataFrame,
    encoder: RecordEncoder,
    normaliser: FeatureNormaliser,
    config: TrainConfig,
    n_classes: int,
    *,
    resume_path: str | Path | None = None,
    distributed: Distributed = Distributed(),
) -> tuple[nn.Module, pd.DataFrame]:
    """Train ``model`` on ``train``; keep the weights with the lowest validation loss.

    With ``resume_path`` the loop state is saved there after every epoch and, if the file exists,
    training continues from it (delete it to start over). Returns the best model (unwrapped, in
    eval mode) and the per-epoch history (train_loss, val_loss, val_accuracy).
    """
    device = distributed.device(config.device)
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    counts = np.bincount([b.y for b in train], minlength=n_classes).astype(np.float32)
    class_weight = counts.sum() / np.maximum(counts, 1) / n_classes
    class_weight_t = torch.tensor(class_weight, device=device)
    optimiser = make_optimiser(model, config)
    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.is_file():
        state = _LoopState.load(resume_path, model, optimiser, generator, device)
    else:
        state = _LoopState(best_state=copy.deepcopy(model.state_dict()))
    trained = distributed.wrap(model, device)
    fill = torch.from_numpy(-normaliser.mean / normaliser.std)  # images: a black pixel, standardised (the border shifts uncover)
    while state.epoch < config.epochs and state.stale < config.patience:
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        loss_sum, steps = 0.0, 0  # this rank's share of each step's loss; combined over ranks once per epoch
        augmenting = epoch_generator(config.seed, state.epoch, distributed.rank)  # never the shared order's generator
        for start in range(0, len(order), config.batch_size):
            chunk = [train[i] for i in order[start : start + config.batch_size]]
            # each rank's loss is its share's weighted sum over the whole chunk's weight, times the
            # world size (DDP averages gradients): the gradient of the chunk's weighted mean loss
            chunk_weight = float(sum(class_weight[b.y] for b in chunk))
            mine = distributed.share(chunk)
            scale = distributed.world_size / chunk_weight
            if not mine:  # fewer bags than ranks: join the gradient exchange with a zero-weighted bag
                mine, scale = chunk[:1], 0.0
            batch = make_batch(mine, records, encoder, normaliser)
            if batch.images is not None and config.augment:
                batch.images = augment_images(batch.images, augmenting, fill)
            batch = batch.to(device)
            targets = torch.tensor([b.y for b in mine], device=device)
            with autocast(device):
                logits = trained(batch).logits
            loss = F.cross_entropy(logits.float(), targets, weight=class_weight_t, label_smoothing=config.label_smoothing, reduction="sum") * scale
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            loss_sum, steps = loss_sum + loss.item(), steps + 1
        val_loss, val_accuracy = _validation(model, val, records, encoder, normaliser, device, distributed)
        state.epoch += 1
        state.history.append({"epoch": state.epoch, "train_loss": distributed.sum([loss_sum], device)[0] / (distributed.world_size * steps), "val_loss": val_loss, "val_accuracy": val_accuracy})
        if val_loss < state.best_loss - 1e-4:
            state.best_loss, state.best_state, state.stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            state.stale += 1
        if resume_path is not None and distributed.is_main:
            state.save(resume_path, model, optimiser, generator)
    model.load_state_dict(state.best_state)
    model.eval()
    return model, pd.DataFrame(state.history)
