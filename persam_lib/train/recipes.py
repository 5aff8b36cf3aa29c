"""A model's own training recipe: the training options its authors published, as defaults.

`TrainConfig`'s defaults suit our models. The published PersAM (`persam_paper`) was trained
otherwise (GitHub PersAM-MIL/PersAM, ``PersAM_train.py``): SGD with Nesterov momentum 0.9 and weight
decay 1e-4, the learning rate divided by 10 at fixed epochs, label smoothing 0.05, the noisy-OR
attention loss added with weight 1, random sub-bags of 100 patches and 50 sub-bags averaged at
test. `with_recipe` gives a model its recipe for every option the user did not give, so
``persam train --model persam_paper`` follows the paper while any option set with a flag,
``--config`` or ``--set`` wins (also one set to `TrainConfig`'s own default, such as
``--set attention_loss_weight=0``). `persam train`, `persam compare` and `compare_models` apply it;
from Python, call `with_recipe` on the config before `train_cross_validated`.

Where our data differ, the recipe does. Its optimiser stays ours (AdamW, lr 3e-3): the release's
SGD was for fine-tuning an end-to-end ResNet-50 over 30 sub-bags per slide per epoch, and on frozen
features within our epochs it did not train — SGD with Nesterov momentum at lr 1e-2 (÷10 every 40
epochs) reached a balanced accuracy of 0.66 on a 128-patient demo cohort (seed 5) where AdamW reached
0.95–1.0 (``--set optimizer=sgd --set lr=... --set lr_step=...`` gives it back). And one sub-bag per
slide per epoch: the release's 30 multiply an epoch's cost by 30; our early stopping gives the epochs.
"""
from __future__ import annotations

from dataclasses import fields, replace
from collections.abc import Iterable
from typing import Any

from persam_lib.options import with_overrides
from persam_lib.train.loop import TrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    "persam_paper": {"label_smoothing": 0.05, "attention_loss_weight": 1.0, "subbag_size": 100, "subbags_per_slide": 1, "subbags_at_test": 50},
}


def recipe_of(model: str) -> dict[str, Any]:
    """The training options ``model``'s recipe sets (empty for models that follow `TrainConfig`)."""
    return dict(RECIPES.get(model, {}))


def with_recipe(config: TrainConfig, given: Iterable[str] | None = None) -> TrainConfig:
    """``config`` with its model's recipe for every training option not in ``given`` (the names
    the user set). Without ``given``, the options whose value differs from `TrainConfig`'s default
    count as given (all that can be told from a config alone)."""
    recipe = recipe_of(config.model)
    if not recipe:
        return config
    if given is None:
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        given = {name for name in recipe if getattr(config, name) != defaults[name]}
    left = {name: value for name, value in recipe.items() if name not in set(given)}
    return with_overrides(config, left) if left else replace(config)
