import pytest
import torch

from persam_lib.models import MODEL_INFO, Batch, ModelConfig, available_models, create_model

CONFIG = ModelConfig(feature_dim=12, n_classes=3, field_cardinalities=(0, 2, 3), d_model=16, n_heads=2, n_layers=2, dropout=0.0)


def _batch(b=3, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 12:] = False  # a shorter bag, padded
    codes = torch.tensor([[1, 1, 2], [1, 2, 3], [0, 0, 0]])[:b]
    cells = torch.stack([torch.randperm(36, generator=g)[:n] for _ in range(b)])  # distinct cells of a 6x6 grid
    coords = torch.stack([cells % 6, cells // 6], dim=-1) * 256 + 512  # level-0 top-left corners
    return Batch(torch.randn(b, n, 12, generator=g), mask, coords, codes, torch.randn(b, 3, generator=g))


@pytest.mark.parametrize("name", available_models("features"))
def test_forward_backward_shapes_and_attention(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG)
    batch = _batch()
    out = model(batch)
    assert out.logits.shape == (3, 3) and torch.isfinite(out.logits).all()
    if MODEL_INFO[name].reads_image:
        assert out.patch_attention.shape == (3, 20)
        torch.testing.assert_close(out.patch_attention.sum(1), torch.ones(3))
        assert out.patch_attention[1, 12:].abs().sum() == 0  # padding gets no attention
    else:
        assert out.patch_attention is None
    if out.field_attention is not None:
        assert out.field_attention.shape == (3, 3)
        torch.testing.assert_close(out.field_attention.sum(1), torch.ones(3))
    out.logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", available_models("features"))
def test_record_sensitivity_matches_what_the_model_reads(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG).eval()
    batch = _batch()
    altered = Batch(batch.features, batch.patch_mask, batch.coords, batch.codes.clone(), batch.values.clone())
    altered.codes[:, 1] = torch.where(altered.codes[:, 1] == 1, 2, 1)  # flip the categorical field
    altered.values[:, 0] += 2.0
    with torch.no_grad():
        a, b = model(batch), model(altered)
    info = MODEL_INFO[name]
    assert torch.allclose(a.logits, b.logits) != info.reads_record
    if info.reads_image:
        moved = (a.patch_attention - b.patch_attention).abs().max().item()
        assert (moved > 1e-5) == info.record_steers_attention, moved


@pytest.mark.parametrize("name", available_models("features"))
def test_image_sensitivity_matches_what_the_model_reads(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG).eval()
    batch = _batch()
    other = Batch(batch.features + torch.randn_like(batch.features), batch.patch_mask, batch.coords, batch.codes, batch.values)
    with torch.no_grad():
        same = torch.allclose(model(batch).logits, model(other).logits)
    assert same != MODEL_INFO[name].reads_image


@pytest.mark.parametrize("name", available_models("features"))
def test_padding_does_not_change_the_result(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG).eval()
    batch = _batch()
    short = Batch(batch.features[1:2, :12], batch.patch_mask[1:2, :12], batch.coords[1:2, :12], batch.codes[1:2], batch.values[1:2])
    with torch.no_grad():
        full, alone = model(batch), model(short)
    torch.testing.assert_close(full.logits[1:2], alone.logits, atol=1e-5, rtol=1e-4)
    if full.patch_attention is not None:
        torch.testing.assert_close(full.patch_attention[1:2, :12], alone.patch_attention, atol=1e-6, rtol=1e-4)


def test_persam_field_attention_sums_to_one_and_missing_values_work():
    model = create_model("persam", CONFIG).eval()
    out = model(_batch())
    assert out.field_attention.shape == (3, 3)
    torch.testing.assert_close(out.field_attention.sum(1), torch.ones(3))


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="Available models: abmil, chexradinet, clinical_only, cnn, cnn_concat, concat, mma_mgmu, persam, persam_paper, transmil"):
        create_model("transformer9000", CONFIG)


def test_grid_placement_follows_coordinates_and_rejects_irregular_ones():
    from persam_lib.models.grid import gather_from_grid, scatter_to_grid

    coords = torch.tensor([[[512, 256], [0, 0], [256, 256], [0, 0]]])
    mask = torch.tensor([[True, True, True, False]])
    tokens = torch.arange(1.0, 5.0).view(1, 4, 1)
    grid, index = scatter_to_grid(tokens, coords, mask)
    assert grid[0, 0].tolist() == [[2.0, 0.0, 0.0], [0.0, 3.0, 1.0]]  # rows are y, columns are x
    assert gather_from_grid(grid, index, mask)[0, :, 0].tolist() == [1.0, 2.0, 3.0, 0.0]
    irregular = torch.tensor([[[0, 0], [1, 0], [5000, 5000]]])
    with pytest.raises(ValueError, match="regular grid"):
        scatter_to_grid(torch.zeros(1, 3, 1), irregular, torch.ones(1, 3, dtype=torch.bool))


def test_radiomics_describe_the_region():
    import numpy as np

    from persam_lib.models.radiomics import FIRST_ORDER, GLCM, N_FEATURES, radiomics

    rng = np.random.default_rng(0)
    image = np.zeros((20, 20))
    image[:, 10:] = rng.normal(5, 2, (20, 10))  # a noisy right half
    flat, noisy = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    flat[:, :10], noisy[:, 10:] = True, True
    a, b = radiomics(image, flat), radiomics(image, noisy)
    assert a.shape == (N_FEATURES,) and np.isfinite(a).all() and np.isfinite(b).all()
    named_a, named_b = dict(zip(FIRST_ORDER + GLCM, a)), dict(zip(FIRST_ORDER + GLCM, b))
    assert named_a["std"] == 0 and named_b["std"] > 1 and abs(named_b["mean"] - 5) < 0.5
    assert named_b["contrast"] > named_a["contrast"] and named_a["homogeneity"] >= named_b["homogeneity"]
    assert named_a["area_fraction"] == 0.5
    assert (radiomics(image, np.zeros((20, 20), bool)) == 0).all()


def test_chexradinet_region_radiomics_of_a_batch_equal_the_reference_bag_by_bag():
    """The slide form describes each bag's top patches by attention: batched, padded bags give what
    `radiomics` gives on each bag's own grid and region (the top round(fraction · n) patches)."""
    import numpy as np

    from persam_lib.models.radiomics import radiomics

    model = create_model("chexradinet", CONFIG)
    generator = torch.Generator().manual_seed(0)
    b, n, h, w = 3, 12, 4, 5
    index = torch.stack([torch.randperm(h * w, generator=generator)[:n] for _ in range(b)])
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 7:] = False  # a shorter bag, padded
    mask[2] = False  # an empty bag
    index = torch.where(mask, index, h * w)
    attention = torch.rand(b, n, generator=generator) * mask
    intensity = torch.rand(b, h, w, generator=generator) * 3
    got = model._region_radiomics(attention, index, mask, intensity).numpy()
    for i in range(b):
        real = int(mask[i].sum())
        region = np.zeros(h * w, dtype=bool)
        if real:
            top = torch.topk(attention[i, :real], max(int(round(model.region_fraction * real)), 1)).indices
            region[index[i, top].numpy()] = True
        np.testing.assert_allclose(got[i], radiomics(intensity[i].numpy(), region.reshape(h, w)), rtol=1e-4, atol=1e-5)
    assert (got[2] == 0).all() and got[0, -1] != 0


def test_chexradinet_iterations_change_the_output():
    from dataclasses import replace

    torch.manual_seed(0)
    one = create_model("chexradinet", replace(CONFIG, radiomics_iterations=1)).eval()
    torch.manual_seed(0)
    three = create_model("chexradinet", replace(CONFIG, radiomics_iterations=3)).eval()
    batch = _batch()
    with torch.no_grad():
        assert not torch.allclose(one(batch).logits, three(batch).logits)


def test_bipartite_attention_patches_see_only_the_global_tokens_and_themselves():
    from persam_lib.models.layers import BipartiteAttention

    torch.manual_seed(0)
    layer = BipartiteAttention(16, 2, dropout=0.0).eval()
    globals_, patches = torch.randn(1, 3, 16), torch.randn(1, 10, 16)  # class + 2 fields, 10 patches
    mask = torch.ones(1, 10, dtype=torch.bool)
    changed = patches.clone()
    changed[0, 4] += 5.0  # change patch 4
    with torch.no_grad():
        (a_g, a_p), (b_g, b_p) = layer(globals_, patches, mask), layer(globals_, changed, mask)
    others = [j for j in range(10) if j != 4]
    torch.testing.assert_close(a_p[0, others], b_p[0, others])  # other patches do not see patch 4
    assert not torch.allclose(a_g, b_g)  # the class and field tokens do
    assert not torch.allclose(a_p[0, 4], b_p[0, 4])


def test_persam_attention_modes():
    from dataclasses import replace

    full = create_model("persam", replace(CONFIG, patch_attention="full"))
    bipartite = create_model("persam", replace(CONFIG, patch_attention="bipartite"))
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in bipartite.parameters())  # same weights, other wiring
    with pytest.raises(ValueError, match="The model setting 'patch_attention' must be 'bipartite' or 'full'. Got 'sparse' instead"):
        replace(CONFIG, patch_attention="sparse")  # checked once, where the setting is declared


def _dense_attention(block, globals_, patches, patch_mask, bipartite, class_sees_patches=True):
    """The head-averaged attention matrix (B, T, T) of a block, built densely from its weights."""
    import math

    x = torch.cat([globals_, patches], dim=1)
    key_mask = torch.cat([torch.ones(globals_.shape[:2], dtype=torch.bool), patch_mask], dim=1)
    n_global = globals_.shape[1] if bipartite else 0
    b, t, d = x.shape
    attn = block.attn
    q, k, _ = attn.qkv(block.norm1(x)).view(b, t, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    allowed = key_mask[:, None, None, :].expand(b, 1, t, t).clone()
    if n_global:
        patch_rows = torch.zeros(t, t, dtype=torch.bool)
        patch_rows[n_global:, :n_global] = True
        patch_rows[range(n_global, t), range(n_global, t)] = True
        allowed[:, :, n_global:] &= patch_rows[n_global:]
    if not class_sees_patches:  # the class token (row 0) reads the global tokens only
        allowed[:, :, 0, globals_.shape[1] :] = False
    scores = (q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0).mean(1)


@pytest.mark.parametrize("reads", ["all", "record"])
@pytest.mark.parametrize("wiring", ["bipartite", "full"])
def test_persam_rollout_and_last_layer_match_a_dense_computation(wiring, reads):
    """Rollout computed row by row equals (0.5·A + 0.5·I) multiplied densely over the layers, and
    updating only the class token in the last layer gives the logits of a full last layer; with
    ``class_token_reads="record"`` the class token reads no patch before the last layer."""
    from dataclasses import replace

    torch.manual_seed(0)
    model = create_model("persam", replace(CONFIG, n_layers=3, patch_attention=wiring, class_token_reads=reads)).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch, rollout=True)
        globals_, patches = model.embed_tokens(batch)
        eye = torch.eye(globals_.shape[1] + patches.shape[1])
        product = eye.expand(patches.shape[0], -1, -1)
        for i, block in enumerate(model.blocks):
            sees = reads == "all" or i == len(model.blocks) - 1
            product = (0.5 * _dense_attention(block, globals_, patches, batch.patch_mask, wiring == "bipartite", sees) + 0.5 * eye) @ product  # Â_l ... Â_1
            globals_, patches = block(globals_, patches, batch.patch_mask, sees)
        logits = model.head(model.norm(globals_[:, 0]))
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-4)
    patches = product[:, 0, 1 + 3 :]
    torch.testing.assert_close(out.patch_attention_rollout, patches / patches.sum(-1, keepdim=True), atol=1e-5, rtol=1e-4)
    assert out.patch_attention_rollout[1, 12:].abs().sum() == 0
    assert not torch.allclose(out.patch_attention_rollout, out.patch_attention)  # rollout is not the last layer's map


@pytest.mark.parametrize("name", [n for n in available_models("features") if MODEL_INFO[n].reads_image])
def test_every_image_model_gives_per_head_maps_and_rollout(name):
    torch.manual_seed(0)
    model = create_model(name, CONFIG).eval()
    with torch.no_grad():
        plain, detailed = model(_batch()), model(_batch(), rollout=True)
    torch.testing.assert_close(plain.patch_attention, detailed.patch_attention)
    heads, rollout = detailed.patch_attention_heads, detailed.patch_attention_rollout
    assert heads.shape[0] == 3 and heads.shape[2] == 20 and rollout.shape == (3, 20)
    torch.testing.assert_close(heads.sum(-1), torch.ones(heads.shape[:2]))
    torch.testing.assert_close(rollout.sum(-1), torch.ones(3))
    assert heads[1, :, 12:].abs().sum() == 0 and rollout[1, 12:].abs().sum() == 0


@pytest.mark.parametrize("bipartite", [True, False])
def test_attention_wirings_equal_a_dense_masked_softmax(bipartite):
    """Both wirings (and the class-token-only path) compute softmax(QKᵀ/√dh + mask)·V exactly."""
    from persam_lib.models.layers import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(16, 4, 2.0, 0.0, bipartite=bipartite).eval()
    globals_, patches = torch.randn(2, 3, 16), torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        out_g, out_p = block.attn(block.norm1(globals_), block.norm1(patches), mask)
        cls, cls_attention = block.attn.forward_class_token(block.norm1(globals_), block.norm1(patches), mask)
        x = block.norm1(torch.cat([globals_, patches], dim=1))
        b, t, d = x.shape
        q, k, v = block.attn.qkv(x).view(b, t, 3, 4, 4).permute(2, 0, 3, 1, 4)
        allowed = torch.cat([torch.ones(2, 3, dtype=torch.bool), mask], 1)[:, None, None, :].expand(b, 1, t, t).clone()
        if bipartite:
            patch_rows = torch.zeros(t, t, dtype=torch.bool)
            patch_rows[3:, :3] = True
            patch_rows[range(3, t), range(3, t)] = True
            allowed[:, :, 3:] &= patch_rows[3:]
        weights = torch.softmax((q @ k.transpose(-1, -2) / 2.0).masked_fill(~allowed, float("-inf")), -1)  # (B, H, T, T)
        dense = block.attn.proj((weights @ v).transpose(1, 2).reshape(b, t, d))
    torch.testing.assert_close(out_g, dense[:, :3], atol=1e-5, rtol=1e-4)
    real = torch.cat([torch.ones(2, 3, dtype=torch.bool), mask], 1)
    torch.testing.assert_close(out_p[mask], dense[:, 3:][mask], atol=1e-5, rtol=1e-4)  # padded patches' own outputs are never read
    torch.testing.assert_close(cls[:, 0], dense[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cls_attention, weights[:, :, 0], atol=1e-6, rtol=1e-4)
    assert (cls_attention[~real[:, None, :].expand_as(cls_attention)] == 0).all()


@pytest.mark.parametrize("name,wiring", [(n, "bipartite") for n in available_models("features")] + [("persam", "full")])
def test_one_bag_under_several_records_equals_the_bag_repeated(name, wiring):
    """The explain path: a bag's image side computed once for K records gives the K-row result."""
    from dataclasses import replace

    torch.manual_seed(0)
    model = create_model(name, replace(CONFIG, patch_attention=wiring)).eval()
    full = _batch()
    bag = Batch(full.features[1:2], full.patch_mask[1:2], full.coords[1:2], full.codes[1:2], full.values[1:2])  # the padded bag
    codes = torch.tensor([[1, 1, 2], [1, 2, 3], [0, 0, 0], [1, 2, 1]])
    values = torch.tensor([[0.5, 0, 0], [-1.0, 0, 0], [0, 0, 0], [2.0, 0, 0]])
    shared = Batch(bag.features, bag.patch_mask, bag.coords, codes, values)
    repeated = Batch(bag.features.expand(4, -1, -1), bag.patch_mask.expand(4, -1), bag.coords.expand(4, -1, -1), codes, values)
    with torch.no_grad():
        a, b = model(shared, rollout=True), model(repeated, rollout=True)
    for field in ("logits", "patch_attention", "field_attention", "patch_attention_heads", "patch_attention_rollout"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert x.shape == y.shape and x.shape[0] == 4, field
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_with_class_token_reads_record_the_map_query_is_the_records_alone():
    """Two layers, class_token_reads="record": what the class token brings to the last layer (its
    query) is the same for two different bags under one record, so the map is chosen by the record."""
    from dataclasses import replace

    torch.manual_seed(0)
    captured = {}
    for reads in ("all", "record"):
        model = create_model("persam", replace(CONFIG, class_token_reads=reads)).eval()
        last = model.blocks[-1]
        original = last.forward_class_token
        seen = []
        last.forward_class_token = lambda g, p, m, _o=original, _s=seen: (_s.append(g[:, 0].clone()), _o(g, p, m))[1]
        batch = _batch()
        other = Batch(torch.randn_like(batch.features), batch.patch_mask, batch.coords, batch.codes, batch.values)
        with torch.no_grad():
            model(batch), model(other)
        captured[reads] = seen
    torch.testing.assert_close(captured["record"][0], captured["record"][1])
    assert not torch.allclose(captured["all"][0], captured["all"][1])
    with pytest.raises(ValueError, match="class_token_reads' must be 'all' or 'record'"):
        replace(CONFIG, class_token_reads="patches")
