"""The published PersAM's attention arithmetic against the formulas it implements."""
import numpy as np
import pytest
import torch

from persam_lib.models.balanced_attention import aggregator_maps, balanced_softmax, class_token_mask, noisy_or_attention_loss, noisy_or_class_weights


def _release_balanced(scores: np.ndarray, n: int, r: int) -> np.ndarray:
    """The release's BalancedSA.attention, written out row by row (no padding)."""
    out = np.zeros_like(scores)
    for idx in np.ndindex(scores.shape[:-1]):
        row = scores[idx]
        parts = [row[:n], row[n : n + r], row[n + r :]]
        finite = [p[np.isfinite(p)] for p in parts]
        summary = np.array([finite[0].mean(), finite[1].mean(), finite[2].max()])
        share = np.exp(summary - summary.max())
        share /= share.sum()
        pieces = []
        for g, p in enumerate(parts):
            e = np.where(np.isfinite(p), np.exp(p - finite[g].max()), 0.0)
            pieces.append(e / e.sum() * share[g])
        out[idx] = np.concatenate(pieces)
    return out


def test_balanced_softmax_equals_the_dense_reference_and_rows_sum_to_one():
    n, r, c = 7, 2, 3
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, n + r + c, n + r + c, generator=g) * 2 + class_token_mask(n, r, c)
    weights = balanced_softmax(scores, n, r)
    np.testing.assert_allclose(weights.numpy(), _release_balanced(scores.numpy(), n, r), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, n + r + c))


def _sliced_balanced(scores: torch.Tensor, n: int, r: int, patch_mask: torch.Tensor) -> torch.Tensor:
    """The formula in torch, one group at a time by slicing (what autograd differentiates group by group)."""
    scores = scores.masked_fill(~torch.cat([patch_mask, torch.ones(patch_mask.shape[0], scores.shape[-1] - n, dtype=torch.bool)], 1)[:, None, None], float("-inf"))
    parts = [scores[..., :n], scores[..., n : n + r], scores[..., n + r :]]
    summaries = [torch.where(p > float("-inf"), p, 0.0).sum(-1, keepdim=True) / (p > float("-inf")).sum(-1, keepdim=True) for p in parts[:2]] + [parts[2].amax(-1, keepdim=True)]
    shares = torch.softmax(torch.cat(summaries, -1), -1)
    return torch.cat([torch.softmax(p, -1) * shares[..., g : g + 1] for g, p in enumerate(parts)], -1)


def test_balanced_softmax_has_the_gradient_of_the_formula_with_padding():
    """The groups are cut by one split (one concatenation in the backward pass, not a zero tensor
    of the full size per group): the gradient is the formula's."""
    n, r, c = 9, 3, 2
    g = torch.Generator().manual_seed(1)
    scores = (torch.randn(3, 2, n + r + c, n + r + c, generator=g) * 2 + class_token_mask(n, r, c)).requires_grad_()
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[0, -4:] = False
    upstream = torch.randn(3, 2, n + r + c, n + r + c, generator=g)
    (ours,) = torch.autograd.grad(balanced_softmax(scores, n, r, mask), scores, upstream)
    (formula,) = torch.autograd.grad(_sliced_balanced(scores, n, r, mask), scores, upstream)
    torch.testing.assert_close(ours, formula, rtol=1e-5, atol=1e-6)
    assert not ours[0, ..., n - 4 : n].any()  # padded patches: no weight, so no gradient


def test_class_tokens_never_attend_to_each_other():
    n, r, c = 5, 2, 3
    scores = torch.randn(1, 2, n + r + c, n + r + c) + class_token_mask(n, r, c)
    weights = balanced_softmax(scores, n, r)
    block = weights[..., n + r :, n + r :]
    assert torch.all(block * (1 - torch.eye(c)) == 0)  # off-diagonal: exactly zero
    assert torch.all(torch.diagonal(block, dim1=-2, dim2=-1) > 0)  # each class token sees itself


@pytest.mark.parametrize("n_small,n_large", [(10, 1000), (50, 20000)])
def test_the_record_share_does_not_shrink_as_the_bag_grows(n_small, n_large):
    r, c = 2, 3

    def record_share(n: int) -> torch.Tensor:
        t = n + r + c
        scores = torch.zeros(1, 1, 1, t)  # the last class token's row is all this needs
        scores[..., :n] = 0.5  # every patch scores alike, whatever the bag size
        scores[..., n : n + r] = 1.0
        weights = balanced_softmax(scores + class_token_mask(n, r, c)[-1:], n, r)
        return weights[0, 0, 0, n : n + r].sum()

    small, large = record_share(n_small), record_share(n_large)
    torch.testing.assert_close(small, large)
    plain = torch.softmax(torch.tensor([0.5] * n_large + [1.0] * r), 0)[n_large:].sum()
    assert large > 100 * plain  # a plain softmax would drown the record in a large bag


def test_padded_patches_get_no_weight_and_do_not_change_the_rest():
    n, r, c = 6, 2, 2
    scores = torch.randn(1, 2, n + r + c, n + r + c) + class_token_mask(n, r, c)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    padded = balanced_softmax(scores, n, r, mask)
    assert torch.all(padded[..., 4:6] == 0)
    keep = [0, 1, 2, 3, 6, 7, 8, 9]
    alone = balanced_softmax(scores[:, :, keep][:, :, :, keep], 4, r)
    torch.testing.assert_close(padded[:, :, keep][:, :, :, keep], alone)


def test_aggregator_maps_follow_the_formula_on_a_hand_made_example():
    n, r, c = 3, 2, 2
    s = torch.zeros(1, n + r + c, n + r + c)
    s[0, 5, :3] = torch.tensor([0.0, 2.0, -1.0])  # class 0 -> patches
    s[0, 6, :3] = torch.tensor([1.0, -2.0, 3.0])  # class 1 -> patches
    s[0, 3, :3] = torch.tensor([0.5, 0.5, 0.5])  # record token 0 -> patches
    s[0, 4, :3] = torch.tensor([1.5, -0.5, 0.0])  # record token 1 -> patches
    s[0, 5, 3:5] = torch.tensor([1.0, 3.0])  # class 0 -> record
    s[0, 6, 3:5] = torch.tensor([-1.0, 0.0])  # class 1 -> record
    sig = torch.sigmoid
    record_to_patch = (sig(s[0, 3, :3]) + sig(s[0, 4, :3])) / 2
    expected = torch.stack([sig(s[0, 5 + k, :3]) * record_to_patch * sig(s[0, 5 + k, 3:5]).mean() for k in range(c)])
    class_maps, bag = aggregator_maps(s[:, n:], n, r, c)  # the record and class queries' rows
    torch.testing.assert_close(class_maps[0], expected)
    top = expected.amax(0)
    torch.testing.assert_close(bag[0], top / (top.sum() + 1e-6))
    torch.testing.assert_close(bag.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("n", [5, 50_000])
def test_noisy_or_loss_has_finite_gradients_at_the_ends(value, n):
    maps = torch.full((2, 3, n), value, requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = noisy_or_attention_loss(maps, labels, noisy_or_class_weights(labels, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(maps.grad).all()


def test_noisy_or_loss_matches_the_release_where_the_release_is_finite():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 3, 40, generator=g)
    labels = torch.tensor([0, 1, 1])
    weights = noisy_or_class_weights(labels, 3)
    p = 1 - ((1 - maps) * 0.05 + 0.95).prod(-1)  # the release's arithmetic
    target = torch.nn.functional.one_hot(labels, 3).float()
    w = target * weights[:, 1] + (1 - target) * weights[:, 0]
    reference = torch.nn.functional.binary_cross_entropy(p, target, weight=w)
    torch.testing.assert_close(noisy_or_attention_loss(maps, labels, weights), reference)
    # release weights: all/(2·pos) for a positive target, all/(2·neg) for a negative one
    torch.testing.assert_close(weights[1], torch.tensor([3 / (2 * 1), 3 / (2 * 2)]))
