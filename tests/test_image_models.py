"""Models on 2-D images: the same contract as on slides, over the image's patch grid."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from persam_lib.models import MODEL_INFO, Batch, ModelConfig, available_models, create_model
from persam_lib.models.cnn import ConvBackbone, PatchGridEncoder, cell_coords, cells_to_tokens
from persam_lib.models.mma_mgmu import parse_stages

CONFIG = ModelConfig(feature_dim=1, n_classes=3, field_cardinalities=(0, 2, 3), d_model=16, n_heads=2, n_layers=2, dropout=0.0, input_kind="image", image_size=64, grid_cell=16)
CELLS = (64 // 16) ** 2
IMAGE_MODELS = available_models("image")


def _batch(b=3, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    codes = torch.tensor([[1, 1, 2], [1, 2, 3], [0, 0, 0]])[:b]
    return Batch.of_images(torch.randn(b, channels, 64, 64, generator=g), codes, torch.randn(b, 3, generator=g))


def _calibrated(model):
    """The model in eval mode with BatchNorm statistics of real activations (fresh running stats
    leave an untrained CNN's features almost constant)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_batch(seed=10 + seed, channels=model_channels(model)))
    return model.eval()


def model_channels(model) -> int:
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 1


def test_the_registry_says_which_models_run_on_images():
    assert {"persam", "mma_mgmu", "chexradinet", "cnn", "cnn_concat", "clinical_only"} <= set(IMAGE_MODELS)
    assert "cnn" not in available_models("features")
    with pytest.raises(ValueError, match="does not run on slides.*abmil"):
        create_model("cnn", replace(CONFIG, input_kind="features", feature_dim=12))
    with pytest.raises(ValueError, match="The model setting 'grid_cell' must be a power of two >= 4. Got 12 instead"):
        replace(CONFIG, grid_cell=12)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_backward_and_attention_over_the_patch_grid(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG)
    out = model(_batch(), rollout=True)
    assert out.logits.shape == (3, 3) and torch.isfinite(out.logits).all()
    if MODEL_INFO[name].reads_image:
        assert out.patch_attention.shape == (3, CELLS) and out.patch_attention_rollout.shape == (3, CELLS)
        torch.testing.assert_close(out.patch_attention.sum(1), torch.ones(3))
        torch.testing.assert_close(out.patch_attention_heads.sum(-1), torch.ones(out.patch_attention_heads.shape[:2]))
    else:
        assert out.patch_attention is None
    out.logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_record_and_image_sensitivity_match_what_the_model_reads(name):
    torch.manual_seed(0)
    model = _calibrated(create_model(name, CONFIG))
    batch = _batch()
    altered = Batch.of_images(batch.images, batch.codes.clone(), batch.values.clone())
    altered.codes[:, 1] = torch.where(altered.codes[:, 1] == 1, 2, 1)
    altered.values[:, 0] += 2.0
    other_image = Batch.of_images(batch.images + torch.randn_like(batch.images), batch.codes, batch.values)
    info = MODEL_INFO[name]
    with torch.no_grad():
        a, b, c = model(batch), model(altered), model(other_image)
    assert torch.allclose(a.logits, b.logits) != info.reads_record
    assert torch.allclose(a.logits, c.logits) != info.reads_image
    if info.reads_image:
        moved = (a.patch_attention - b.patch_attention).abs().max().item()
        assert (moved > 1e-5) == info.record_steers_attention, moved


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_one_image_under_several_records_equals_the_image_repeated(name):
    """The explain path on images: the image stored once, its record-free part computed once."""
    torch.manual_seed(0)
    model = _calibrated(create_model(name, CONFIG))
    image = _batch().images[1:2]
    codes = torch.tensor([[1, 1, 2], [1, 2, 3], [0, 0, 0], [1, 2, 1]])
    values = torch.tensor([[0.5, 0, 0], [-1.0, 0, 0], [0, 0, 0], [2.0, 0, 0]])
    with torch.no_grad():
        a = model(Batch.of_images(image, codes, values), rollout=True)
        b = model(Batch.of_images(image.expand(4, -1, -1, -1), codes, values), rollout=True)
    for field in ("logits", "patch_attention", "field_attention", "patch_attention_heads", "patch_attention_rollout"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert x.shape[0] == 4, field
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_small_widths_and_the_stages_mma_may_steer_are_checked_up_front():
    for name in ("persam", "cnn", "mma_mgmu"):  # stems keep at least 8 channels; the bag model reads what the stem makes
        assert create_model(name, replace(CONFIG, d_model=4, n_heads=2)).eval()(_batch()).logits.shape == (3, 3)
    with pytest.raises(ValueError, match=r"ehr_stages '3,4': the CNN has stages 1\.\.3 \(one per halving of grid_cell\)"):
        create_model("mma_mgmu", replace(CONFIG, grid_cell=8))  # three stages: '3,4' names a fourth
    assert create_model("persam", replace(CONFIG, grid_cell=8)) is not None  # only MMA-MGMU reads ehr_stages: its default is no error elsewhere


def test_rgb_images_run_with_three_channels():
    model = create_model("mma_mgmu", replace(CONFIG, feature_dim=3)).eval()
    with torch.no_grad():
        assert model(_batch(channels=3)).patch_attention.shape == (3, CELLS)


def test_patch_grid_encoder_sees_each_patch_alone_and_the_cnn_sees_its_neighbours():
    """PersAM's tokens depend on their own patch only (as a slide's tiles); CNN cells see beyond theirs."""
    torch.manual_seed(0)
    images = torch.randn(1, 1, 64, 64)
    changed = images.clone()
    changed[0, 0, 16:32, 16:32] += 3.0  # patch (row 1, column 1) = cell 5 in row-major order
    for stem, alone in ((PatchGridEncoder(1, 16, 16).eval(), True), (ConvBackbone(1, 16, 16).eval(), False)):
        with torch.no_grad():
            a, b = stem(images), stem(changed)
        a, b = (cells_to_tokens(t) if t.dim() == 4 else t for t in (a, b))
        differs = (a - b).abs().amax(-1)[0] > 1e-6
        assert differs[5]
        assert (differs.sum() == 1) == alone, differs


def test_cell_coordinates_are_row_major_top_left_corners():
    coords = cell_coords(64, 16)
    assert coords.tolist()[:5] == [[0, 0], [16, 0], [32, 0], [48, 0], [0, 16]]
    grid = torch.arange(16.0).reshape(1, 1, 4, 4)  # value = row * 4 + column
    assert cells_to_tokens(grid)[0, :, 0].tolist() == list(range(16))


def test_mma_ehr_stages_are_checked_and_steer_where_asked():
    assert parse_stages("3,4", 4) == (2, 3) and parse_stages("1", 2) == (0,)
    for bad in ("0", "5", "x", ""):
        with pytest.raises(ValueError, match="ehr_stages"):
            parse_stages(bad, 4)
    model = create_model("mma_mgmu", replace(CONFIG, ehr_stages="1"))
    assert list(model.gates) == ["0"]


def test_chexradinet_radiomics_are_computed_on_the_pixels_of_the_attended_cells():
    from persam_lib.models.radiomics import FIRST_ORDER

    model = create_model("chexradinet", replace(CONFIG, region_fraction=1 / CELLS))  # the region is the top cell
    intensity = torch.zeros(1, 64, 64)
    intensity[0, 32:48, 16:32] = 5.0  # cell (row 2, column 1) = 9
    attention = torch.full((1, CELLS), 0.01)
    attention[0, 9] = 1.0
    features = model._region_radiomics(attention, intensity)[0]
    assert features[FIRST_ORDER.index("mean")] == pytest.approx(5.0)
    assert features[FIRST_ORDER.index("area_fraction")] == pytest.approx(1 / CELLS)
    attention[0, 9], attention[0, 0] = 0.01, 1.0
    assert model._region_radiomics(attention, intensity)[0][FIRST_ORDER.index("mean")] == pytest.approx(0.0)


def test_batched_radiomics_equal_the_reference_image_by_image():
    from persam_lib.models.radiomics import radiomics, radiomics_batch

    rng = np.random.default_rng(0)
    images = rng.random((10, 24, 20)) * rng.uniform(0.5, 3, (10, 1, 1))
    regions = rng.random((10, 24, 20)) < rng.uniform(0.05, 0.9, (10, 1, 1))
    regions[0] = False  # empty: all zeros
    regions[1] = False
    regions[1, 5, 5] = True  # one pixel: no neighbouring pairs, flat texture
    regions[2] = False
    regions[2, 3:9, 4:10] = True
    expected = np.stack([radiomics(i, r) for i, r in zip(images, regions)])
    got = radiomics_batch(torch.from_numpy(images), torch.from_numpy(regions)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert got[0].tolist() == [0.0] * len(got[0]) and got[3, -1] != 0


@pytest.mark.parametrize("name", ["persam", "mma_mgmu", "chexradinet", "cnn", "cnn_concat"])
def test_each_image_model_learns_a_visible_texture_above_chance(name):
    """A small task every image model must learn: is the textured patch speckled or smooth?"""
    from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec
    from persam_lib.models.clinical import RecordEncoder
    from persam_lib.train.data import Bag, FeatureNormaliser
    from persam_lib.train.loop import TrainConfig, evaluate, fit
    import pandas as pd

    rng = np.random.default_rng(0)
    bags, rows = [], []
    for i in range(96):
        y = i % 2
        image = rng.normal(0.3, 0.05, (1, 32, 32)).astype(np.float32)
        r, c = rng.integers(0, 4, 2) * 8
        image[0, r : r + 8, c : c + 8] = 0.7 + (rng.choice([-0.25, 0.25], (8, 8)) if y else 0.0)  # same mean, texture differs
        bags.append(Bag(f"I{i}", f"P{i}", None, cell_coords(32, 8).numpy(), 8, y, image=image))
        rows.append({"patient_id": f"P{i}", "sex": rng.choice(["F", "M"])})
    records = pd.DataFrame(rows).set_index("patient_id")
    encoder = RecordEncoder(FieldSchema((FieldSpec("sex", "categorical", ("F", "M")),), LabelSpec("y", ("0", "1")))).fit(records)
    normaliser = FeatureNormaliser.fit(bags[:64])
    torch.manual_seed(0)
    config = ModelConfig(feature_dim=1, n_classes=2, field_cardinalities=encoder.cardinalities, d_model=16, n_heads=2, dropout=0.0, input_kind="image", image_size=32, grid_cell=8, ehr_stages="2,3")
    model, history = fit(create_model(name, config), bags[:64], bags[64:80], records, encoder, normaliser, TrainConfig(model=name, epochs=25, patience=25, batch_size=8), 2)  # the model config holds dropout
    probs = evaluate(model, bags[80:], records, encoder, normaliser, torch.device("cpu"))
    accuracy = (probs.argmax(1) == np.array([b.y for b in bags[80:]])).mean()
    assert accuracy >= 0.75, accuracy
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
