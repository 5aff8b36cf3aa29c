"""Measuring a training step's cost (`persam_lib.models.cost`): the book's cost table and the benchmarks."""
import sys

import pytest

from persam_lib.models.cost import StepSpec, peak_memories_mb, step_costs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resident size is reset through /proc (Linux)")
def test_one_worker_measures_each_spec_from_its_own_start():
    """Specs measured one after another in one process: a small step after a large one reads
    its own peak, not the large one's (the peak is reset and freed memory given back)."""
    small, large = StepSpec("abmil", 64, 16), StepSpec("abmil", 100_000, 256)
    first, big, again = peak_memories_mb([small, large, small])
    assert big > first + 100  # MB: 100k patches of 256 floats are 100 MB before any activation
    assert again < first + 0.25 * (big - first)


def test_step_costs_time_every_model_at_every_size_smallest_first():
    costs = step_costs(["persam", "abmil"], [64, 16], feature_dim=8, memory=False)
    assert [(c.n_patches, c.model) for c in costs] == [(16, "persam"), (16, "abmil"), (64, "persam"), (64, "abmil")]
    assert all(c.step_ms > 0 and c.peak_mb is None for c in costs)
