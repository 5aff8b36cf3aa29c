"""Sub-bags: random subsets of a slide's patches, the published PersAM's unit of training.

The authors train on sub-bags of 100 patches, 30 per slide per epoch, and average the
predictions of 50 sub-bags at test time. Sub-bags here are drawn without replacement from
successive permutations of the slide's patches, so over ``count`` sub-bags every patch appears
before any appears twice (once ``count · size ≥ N``, every patch is seen in one epoch), and the
draws come from a generator seeded by (seed, epoch, slide), so a resumed or distributed run draws
the same sub-bags.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SubBagConfig:
    """How bags are cut into sub-bags; ``size`` 0 means whole bags (no sub-bags)."""

    size: int = 0  # patches per sub-bag (the release: 100)
    per_slide: int = 1  # sub-bags per slide per epoch (the release: 30)
    at_test: int = 1  # sub-bags averaged per slide at test time (the release: 50)

    def __post_init__(self) -> None:
        for name, minimum in (("size", 0), ("per_slide", 1), ("at_test", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"The sub-bag option '{name}' must be an int >= {minimum}. Got {value!r} instead.")

    @property
    def enabled(self) -> bool:
        return self.size > 0


def sub_bag_indices(n_patches: int, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, min(size, n_patches)) patch indices: ``count`` sub-bags cut from successive random
    permutations of the ``n_patches`` patches, so no patch repeats before every patch has appeared."""
    if n_patches < 1:
        raise ValueError("a bag needs at least one patch to draw sub-bags from")
    size = min(size, n_patches)
    out = np.empty((count, size), dtype=np.int64)
    pool = rng.permutation(n_patches)  # what is left of the current pass over the patches
    for k in range(count):
        if len(pool) >= size:
            out[k], pool = pool[:size], pool[size:]
            continue
        fresh = rng.permutation(n_patches)  # the next pass; the current one ends inside this sub-bag
        taken = fresh[~np.isin(fresh, pool)][: size - len(pool)]  # no patch twice in one sub-bag
        out[k] = np.concatenate([pool, taken])
        pool = fresh[~np.isin(fresh, taken)]
    return out


TEST_DRAW = 1_000_000  # the "epoch" of the sub-bags drawn for validation and test: the same every epoch


def sub_bag_rng(seed: int, epoch: int, slide_index: int) -> np.random.Generator:
    """The generator of one slide's sub-bags in one epoch: the same draw on every rank and on resume."""
    return np.random.default_rng([seed, epoch, slide_index, 0x5B])
