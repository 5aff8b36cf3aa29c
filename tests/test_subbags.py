"""Sub-bags: seeded, without repeats before every patch has appeared, covering every patch over epochs."""
import numpy as np
import pytest

from persam_lib.train.subbags import SubBagConfig, sub_bag_indices, sub_bag_rng


def test_the_same_seed_epoch_and_slide_draw_the_same_sub_bags():
    a = sub_bag_indices(500, 100, 30, sub_bag_rng(3, 7, 11))
    b = sub_bag_indices(500, 100, 30, sub_bag_rng(3, 7, 11))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (30, 100)
    assert not np.array_equal(a, sub_bag_indices(500, 100, 30, sub_bag_rng(3, 8, 11)))  # another epoch, another draw
    assert not np.array_equal(a, sub_bag_indices(500, 100, 30, sub_bag_rng(3, 7, 12)))  # another slide too


def test_no_patch_repeats_before_every_patch_has_appeared():
    n = 250
    bags = sub_bag_indices(n, 100, 5, sub_bag_rng(0, 0, 0))
    assert sorted(bags.ravel()[:n]) == list(range(n))  # the first 250 draws: every patch once
    assert all(len(set(row)) == len(row) for row in bags)  # never twice in one sub-bag
    counts = np.bincount(bags.ravel(), minlength=n)
    assert counts.min() == 2 and counts.max() == 2  # 500 draws: every patch exactly twice


def test_every_patch_is_covered_over_epochs_even_with_few_sub_bags():
    n, seen = 1000, set()
    for epoch in range(40):  # one sub-bag of 100 per epoch: 10% of the slide each time
        seen |= set(sub_bag_indices(n, 100, 1, sub_bag_rng(0, epoch, 0)).ravel().tolist())
    assert len(seen) > 0.98 * n


def test_a_bag_smaller_than_a_sub_bag_is_taken_whole():
    draws = sub_bag_indices(40, 100, 3, sub_bag_rng(0, 0, 0))
    assert draws.shape == (3, 40) and all(sorted(row) == list(range(40)) for row in draws)


def test_options_are_checked():
    assert not SubBagConfig().enabled and SubBagConfig(size=100, per_slide=30, at_test=50).enabled
    with pytest.raises(ValueError, match="'per_slide' must be an int >= 1. Got 0 instead"):
        SubBagConfig(size=100, per_slide=0)
    with pytest.raises(ValueError, match="at least one patch"):
        sub_bag_indices(0, 10, 1, sub_bag_rng(0, 0, 0))


def test_evaluation_scores_a_small_bag_once_and_a_large_one_per_sub_bag():
    from persam_lib.train.data import Bag
    from persam_lib.train.loop import TrainConfig, sub_bags

    def bag(i: int, n: int) -> Bag:
        return Bag(f"S{i}", f"P{i}", np.zeros((n, 3), np.float32), np.zeros((n, 2), np.int64), 256, 0)

    bags = [bag(0, 40), bag(1, 250)]
    config = TrainConfig.of(subbag_size=100, subbags_at_test=50)
    scored = sub_bags(bags, config, 0, 50, evaluating=True)
    assert [b.slide_id for b in scored].count("S0") == 1 and len(scored[0].features) == 40  # every draw would be the whole bag
    assert [b.slide_id for b in scored].count("S1") == 50 and all(len(b.features) == 100 for b in scored[1:])
    training = sub_bags(bags, config, 0, 3)
    assert [b.slide_id for b in training].count("S0") == 3  # in training each draw is one more step
