"""The training loop for one fold: AdamW, class weights, label smoothing, early stopping.

At the end of an epoch, at most every `RESUME_EVERY_S` seconds, the loop saves its whole state
(weights, optimiser, random generators, early stopping, history) to a resume file, so a fold
interrupted mid-way continues from the last saved epoch and ends exactly where an uninterrupted
run would (same seed, CPU). Under torchrun each rank trains on its share of every batch
(`persam_lib.train.distributed`).
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from persam_lib.io.atomic import atomic_path
from persam_lib.models.balanced_attention import noisy_or_attention_loss, noisy_or_class_weights
from persam_lib.train.subbags import TEST_DRAW, sub_bag_indices, sub_bag_rng
from persam_lib.models.base import ModelSettings
from persam_lib.models.clinical import RecordEncoder
from persam_lib.options import with_overrides
from persam_lib.train.augment import augment_images, epoch_generator
from persam_lib.train.data import Bag, FeatureNormaliser, FoldBatches
from persam_lib.train.distributed import Distributed


# The resume file is written at the end of an epoch once this many seconds have passed since the
# last one: an interruption loses at most this much work, and the small models' epochs (tens of
# milliseconds, a tenth of which went to writing the file every epoch) do not pay for it each time.
RESUME_EVERY_S = 20.0


@dataclass(frozen=True)
class TrainConfig:
    """Which model, with which settings, trained how; saved as ``config.json`` in every run directory.

    The training knobs are fields here; the model's own settings are one `ModelSettings`
    (``model_settings``), declared and checked in `persam_lib.models.base`, not here. Every name
    of either can be set from the command line with ``--set name=value`` or a YAML file given to
    ``--config`` (`persam_lib.options`), and `TrainConfig.of` takes the same flat names; values
    are checked on construction, so a bad one fails before any training starts.
    """

    model: str = "persam"
    model_settings: ModelSettings = ModelSettings()
    n_folds: int = 5
    val_fraction: float = 0.2
    epochs: int = 100
    patience: int = 30  # early stopping on validation loss
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    augment: bool = True  # 2-D images: random horizontal flips and shifts of up to 1/16 of the side while training
    optimizer: str = "adamw"  # "adamw", or "sgd" (with momentum, Nesterov by default: the published PersAM's)
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    lr_step: int = 0  # every lr_step epochs the learning rate is multiplied by 0.1 (0: constant)
    attention_loss_weight: float = 0.0  # the noisy-OR attention loss (models with per-class maps: persam_paper), added with this weight
    subbag_size: int = 0  # train on random sub-bags of this many patches (0: whole bags); the published PersAM: 100
    subbags_per_slide: int = 1  # sub-bags per slide per epoch (the release: 30)
    subbags_at_test: int = 1  # sub-bags whose predictions are averaged per slide at validation and test (the release: 50)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU

    @classmethod
    def of(cls, **options: Any) -> "TrainConfig":
        """A configuration from flat names, training knobs and model settings alike
        (``TrainConfig.of(model="abmil", epochs=10, d_model=32)``), as ``--set`` takes them."""
        return with_overrides(cls(), options)

    @classmethod
    def for_modality(cls, modality: str, **options: Any) -> "TrainConfig":
        """The defaults for a cohort's ``modality`` ("slides" or "images"), with ``options`` (flat
        names, as for `of`) on top.

        2-D images train end to end through a CNN stem, where the slides' learning rate of 3e-3
        is too high for PersAM (a run of the demo radiographs stayed at chance); images start at 1e-3.
        """
        if modality not in ("slides", "images"):
            raise ValueError(f"modality must be 'slides' or 'images', got {modality!r}")
        return cls.of(**({"lr": 1e-3} if modality == "images" else {}) | options)

    def to_dict(self) -> dict[str, Any]:
        """Every option by its flat name (training knobs, then model settings): ``config.json``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model_settings"}
        return out | dataclasses.asdict(self.model_settings)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A configuration stored by `to_dict` (a run's ``config.json``), also by an older version:
        old setting names are mapped to the current ones."""
        data = ModelSettings.upgrade_names(data)
        names = ModelSettings.names()
        settings = ModelSettings(**{k: v for k, v in data.items() if k in names})
        return cls(**{k: v for k, v in data.items() if k not in names}, model_settings=settings)

    def __post_init__(self) -> None:
        checks = [
            ("n_folds", self.n_folds >= 2, "an int >= 2"),
            ("optimizer", self.optimizer in ("adamw", "sgd"), "'adamw' or 'sgd'"),
            ("momentum", 0 <= self.momentum < 1, "a float in [0, 1)"),
            ("lr_step", self.lr_step >= 0, "an int >= 0"),
            ("attention_loss_weight", self.attention_loss_weight >= 0, "a float >= 0"),
            ("subbag_size", self.subbag_size >= 0, "an int >= 0 (0: whole bags)"),
            ("subbags_per_slide", self.subbags_per_slide >= 1, "an int >= 1"),
            ("subbags_at_test", self.subbags_at_test >= 1, "an int >= 1"),
            ("val_fraction", 0 < self.val_fraction < 1, "a float in (0, 1)"),
            ("epochs", self.epochs >= 1, "an int >= 1"),
            ("patience", self.patience >= 1, "an int >= 1"),
            ("batch_size", self.batch_size >= 1, "an int >= 1"),
            ("lr", self.lr > 0, "a float > 0"),
            ("weight_decay", self.weight_decay >= 0, "a float >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "a float in [0, 1)"),
            ("device", self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()), "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"The training option '{name}' must be {expected}. Got {getattr(self, name)!r} instead.")
        if type(self.model_settings) is not ModelSettings:  # the user's settings alone, not a ModelConfig
            raise TypeError(f"TrainConfig.model_settings must be a ModelSettings, got {type(self.model_settings).__name__}")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (where full precision is both faster and exact)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimiser(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum (``optimizer="sgd"``, Nesterov unless turned off), as one
    fused kernel over all parameters where the device supports it (CPU, CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay, fused=fused or None)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): ``lr``, times 0.1 after every ``lr_step`` epochs."""
    return config.lr * (0.1 ** (epoch // config.lr_step) if config.lr_step else 1.0)


def draws_of(bag: Bag, config: TrainConfig, count: int, *, evaluating: bool = False) -> int:
    """How many sub-bags `sub_bags` cuts from ``bag``: ``count``; one for a 2-D image, and, when
    ``evaluating``, one for a bag no larger than a sub-bag (every draw would hold the same patches,
    and a model in eval mode gives them the same prediction: averaging copies would only cost time)."""
    if bag.features is None or (evaluating and len(bag.features) <= config.subbag_size):
        return 1
    return count


def sub_bags(bags: list[Bag], config: TrainConfig, epoch: int, count: int, *, evaluating: bool = False) -> list[Bag]:
    """Each slide's bag cut into ``count`` random sub-bags of ``config.subbag_size`` patches
    (`persam_lib.train.subbags`: seeded by seed, epoch and slide; `draws_of` says how many); whole
    bags when sub-bags are off or for images. A sub-bag is a `Bag` of the same slide, patient and label."""
    if not config.subbag_size:
        return list(bags)
    out = []
    for i, bag in enumerate(bags):
        draws = draws_of(bag, config, count, evaluating=evaluating)
        if bag.features is None or (draws == 1 and len(bag.features) <= config.subbag_size):  # images, and small bags in evaluation, stay whole
            out.append(bag)
            continue
        for rows in sub_bag_indices(len(bag.features), config.subbag_size, draws, sub_bag_rng(config.seed, epoch, i)):
            out.append(dataclasses.replace(bag, features=bag.features[rows], coords=bag.coords[rows]))
    return out


def evaluate(
    model: nn.Module, bags: list[Bag], records: pd.DataFrame, encoder: RecordEncoder, normaliser: FeatureNormaliser, device: torch.device, batch_size: int = 16, config: TrainConfig | None = None
) -> np.ndarray:
    """Class probabilities (len(bags), C) in eval mode; with ``config`` using sub-bags, each bag's
    probabilities are the mean over ``subbags_at_test`` seeded sub-bags (the published recipe)."""
    return _evaluate(model, bags, FoldBatches(bags, records, encoder, normaliser), device, batch_size, config)


def _evaluate(model: nn.Module, bags: list[Bag], batches: FoldBatches, device: torch.device, batch_size: int = 16, config: TrainConfig | None = None) -> np.ndarray:
    """`evaluate` with the records of ``bags`` encoded once (``batches``)."""
    model.eval()
    by_sub_bags = config is not None and config.subbag_size > 0
    count = config.subbags_at_test if by_sub_bags else 1
    scored = sub_bags(bags, config, TEST_DRAW, count, evaluating=True) if by_sub_bags else bags
    out = []
    with torch.no_grad():
        for start in range(0, len(scored), batch_size):
            batch = batches.batch(scored[start : start + batch_size]).to(device)
            with autocast(device):
                logits = model(batch).logits
            out.append(torch.softmax(logits.float(), -1).cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
    if len(scored) != len(bags):  # average each slide's sub-bags (images and small bags stay whole: one row each)
        owner = np.repeat(np.arange(len(bags)), [draws_of(b, config, count, evaluating=True) for b in bags])
        probs = np.stack([probs[owner == i].mean(0) for i in range(len(bags))])
    return probs


def _validation(model: nn.Module, val: list[Bag], batches: FoldBatches, device: torch.device, distributed: Distributed, config: TrainConfig | None = None) -> tuple[float, float]:
    """Validation loss (mean NLL) and accuracy; under torchrun each rank scores its share and the sums
    are combined. No validation bags (a final model on every patient): NaN, NaN."""
    if not val:
        return float("nan"), float("nan")
    mine = distributed.share(val)
    nll = correct = 0.0
    if mine:
        probs = _evaluate(model, mine, batches, device, config=config)
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
    """Train ``model`` on ``train``; keep the weights with the lowest validation loss (without
    ``val`` bags: the last epoch's, after ``config.epochs``).

    With ``resume_path`` the loop state is saved there at the end of an epoch, at most every
    `RESUME_EVERY_S` seconds, and, if the file exists, training continues from it (delete it to
    start over). Returns the best model (unwrapped, in eval mode) and the per-epoch history
    (train_loss, val_loss, val_accuracy).
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
    attention_weights = noisy_or_class_weights(torch.tensor([b.y for b in train]), n_classes).to(device) if config.attention_loss_weight else None
    whole = train
    batches = FoldBatches(train + val, records, encoder, normaliser)  # the records encoded once, not every step
    saved_at = monotonic()
    while state.epoch < config.epochs and state.stale < config.patience:
        model.train()
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config, state.epoch)
        train = sub_bags(whole, config, state.epoch, config.subbags_per_slide)
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
            batch = batches.batch(mine)
            if batch.images is not None and config.augment:
                batch.images = augment_images(batch.images, augmenting, fill)
            batch = batch.to(device)
            targets = torch.tensor([b.y for b in mine], device=device)
            with autocast(device):
                output = trained(batch)
            loss = F.cross_entropy(output.logits.float(), targets, weight=class_weight_t, label_smoothing=config.label_smoothing, reduction="sum") * scale
            if attention_weights is not None and scale:  # noisy-OR over each class's map: a mean over the chunk's bags, as DDP averages
                attention = noisy_or_attention_loss(output.class_patch_attention, targets, attention_weights, patch_mask=batch.patch_mask)
                loss = loss + config.attention_loss_weight * attention * len(mine) * distributed.world_size / len(chunk)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            loss_sum, steps = loss_sum + loss.item(), steps + 1
        val_loss, val_accuracy = _validation(model, val, batches, device, distributed, config)
        state.epoch += 1
        state.history.append({"epoch": state.epoch, "train_loss": distributed.sum([loss_sum], device)[0] / (distributed.world_size * steps), "val_loss": val_loss, "val_accuracy": val_accuracy})
        if not val:  # nothing to select on: the last epoch's weights (a final model trains for a fixed number of epochs)
            state.best_state = copy.deepcopy(model.state_dict())
        elif val_loss < state.best_loss - 1e-4:
            state.best_loss, state.best_state, state.stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            state.stale += 1
        if resume_path is not None and distributed.is_main and monotonic() - saved_at >= RESUME_EVERY_S:
            state.save(resume_path, model, optimiser, generator)
            saved_at = monotonic()
    model.load_state_dict(state.best_state)
    model.eval()
    return model, pd.DataFrame(state.history)
