"""The GPU path: bf16 autocast, fused attention, large bags. Skipped on machines without CUDA."""
import pytest
import torch

from persam_lib.models import MODEL_INFO, Batch, ModelConfig, available_models, create_model
from persam_lib.train.loop import autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _bag(n: int, feature_dim: int, device: torch.device) -> Batch:
    side = int(n**0.5) + 1
    idx = torch.arange(n)
    coords = torch.stack([idx % side, idx // side], -1)[None] * 256
    return Batch(torch.randn(1, n, feature_dim), torch.ones(1, n, dtype=torch.bool), coords, torch.tensor([[1, 1, 2]]), torch.zeros(1, 3)).to(device)


@pytest.mark.parametrize("name", available_models("features"))
def test_every_model_trains_under_bf16_autocast(name):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model(name, ModelConfig(feature_dim=64, n_classes=2, field_cardinalities=(0, 2, 3), d_model=32, n_heads=4)).to(device)
    batch = _bag(2_000, 64, device)
    with autocast(device):
        out = model(batch, rollout=True)
    out.logits.float().sum().backward()
    assert torch.isfinite(out.logits.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if MODEL_INFO[name].reads_image:
        torch.testing.assert_close(out.patch_attention.float().sum(-1), torch.ones(1, device=device), atol=1e-3, rtol=0)
        torch.testing.assert_close(out.patch_attention_rollout.float().sum(-1), torch.ones(1, device=device), atol=1e-3, rtol=0)


def test_bf16_persam_matches_float32():
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model("persam", ModelConfig(feature_dim=64, n_classes=2, field_cardinalities=(0, 2, 3), d_model=32, n_heads=4)).to(device).eval()
    batch = _bag(5_000, 64, device)
    with torch.no_grad():
        exact = model(batch)
        with autocast(device):
            fast = model(batch)
    torch.testing.assert_close(fast.logits.float(), exact.logits, atol=5e-2, rtol=5e-2)
    assert torch.corrcoef(torch.stack([fast.patch_attention[0].float(), exact.patch_attention[0]]))[0, 1] > 0.99


def test_a_100k_patch_bag_trains_in_linear_memory():
    """A training step on a 100k-patch bag (1024-d features) takes a few GB, not the 80 GB of a GPU."""
    device = torch.device("cuda")
    model = create_model("persam", ModelConfig(feature_dim=1024, n_classes=2, field_cardinalities=(0, 2, 3), d_model=128, n_heads=4)).to(device)
    peaks = []
    for n in (25_000, 100_000):
        batch = _bag(n, 1024, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with autocast(device):
            loss = model(batch).logits.float().sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - before)
        del batch, loss
    assert peaks[1] < 8 * 2**30, peaks
    assert peaks[1] / peaks[0] < 4 * 1.3  # 4x the patches, at most ~4x the memory: linear


@pytest.mark.parametrize("name", available_models("image"))
def test_every_image_model_trains_under_bf16_autocast(name):
    """2-D images on the GPU: CNN stems under bf16 autocast, attention over the patch grid still sums to 1."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    config = ModelConfig(feature_dim=1, n_classes=2, field_cardinalities=(0, 2, 3), d_model=32, n_heads=4, input_kind="image", image_size=128, grid_cell=16)
    model = create_model(name, config).to(device)
    batch = Batch.of_images(torch.randn(8, 1, 128, 128), torch.tensor([[1, 1, 2]] * 8), torch.zeros(8, 3)).to(device)
    with autocast(device):
        out = model(batch, rollout=True)
    out.logits.float().sum().backward()
    assert torch.isfinite(out.logits.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if MODEL_INFO[name].reads_image:
        assert out.patch_attention.shape == (8, 64)
        torch.testing.assert_close(out.patch_attention.float().sum(-1), torch.ones(8, device=device), atol=1e-3, rtol=0)
