import pytest
import torch

from persam_lib.models import READS_RECORD, Batch, ModelConfig, available_models, create_model

CONFIG = ModelConfig(feature_dim=12, n_classes=3, field_cardinalities=(0, 2, 3), d_model=16, n_heads=2, n_layers=2, dropout=0.0)


def _batch(b=3, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 12:] = False  # a shorter bag, padded
    codes = torch.tensor([[1, 1, 2], [1, 2, 3], [0, 0, 0]])[:b]
    return Batch(torch.randn(b, n, 12, generator=g), mask, torch.randint(0, 4000, (b, n, 2), generator=g), codes, torch.randn(b, 3, generator=g))


@pytest.mark.parametrize("name", available_models())
def test_forward_backward_shapes_and_attention(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG)
    batch = _batch()
    out = model(batch)
    assert out.logits.shape == (3, 3) and torch.isfinite(out.logits).all()
    assert out.patch_attention.shape == (3, 20)
    torch.testing.assert_close(out.patch_attention.sum(1), torch.ones(3))
    assert out.patch_attention[1, 12:].abs().sum() == 0  # padding gets no attention
    out.logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", available_models())
def test_record_sensitivity_matches_what_the_model_reads(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG).eval()
    batch = _batch()
    altered = Batch(batch.features, batch.patch_mask, batch.coords, batch.codes.clone(), batch.values.clone())
    altered.codes[:, 1] = torch.where(altered.codes[:, 1] == 1, 2, 1)  # flip the categorical field
    altered.values[:, 0] += 2.0
    with torch.no_grad():
        a, b = model(batch), model(altered)
    moved = (a.patch_attention - b.patch_attention).abs().max().item()
    if READS_RECORD[name]:
        assert moved > 1e-4
        assert not torch.allclose(a.logits, b.logits)
    else:
        assert moved == 0.0 and torch.equal(a.logits, b.logits)


def test_padding_does_not_change_the_result():
    torch.manual_seed(0)
    model = create_model("persam", CONFIG).eval()
    batch = _batch()
    short = Batch(batch.features[1:2, :12], batch.patch_mask[1:2, :12], batch.coords[1:2, :12], batch.codes[1:2], batch.values[1:2])
    with torch.no_grad():
        full, alone = model(batch), model(short)
    torch.testing.assert_close(full.logits[1:2], alone.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.patch_attention[1:2, :12], alone.patch_attention, atol=1e-6, rtol=1e-4)


def test_persam_field_attention_sums_to_one_and_missing_values_work():
    model = create_model("persam", CONFIG).eval()
    out = model(_batch())
    assert out.field_attention.shape == (3, 3)
    torch.testing.assert_close(out.field_attention.sum(1), torch.ones(3))


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="Available models: abmil, persam"):
        create_model("transformer9000", CONFIG)
