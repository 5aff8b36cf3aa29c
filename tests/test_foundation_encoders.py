"""Foundation-model encoders from local files: the timm-layout presets and ``hf:<folder>``.

Every preset is tested at toy size (``tiny=True``: the preset's options at width 32, depth 2) with
random weights saved in the released files' key layout; full-size architectures are only built on
the ``meta`` device. The ``hf:`` encoder is tested with tiny transformers models written by
``save_pretrained``. Nothing here downloads anything.
"""
from __future__ import annotations

import importlib.abc
import json
import socket
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from persam_lib.features.encoders import PRESET_NAMES, available_encoders, create_encoder
from persam_lib.features.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, preprocess_patches
from persam_lib.features.presets import PRESETS, build_preset
from persam_lib.features.timm_backend import TimmTokens, timm_available, timm_import_error
from persam_lib.features.torch_encoder import WeightsError
from persam_lib.features.vit import ViTConfig, VisionTransformer, resample_positions

RNG = np.random.default_rng(0)
PATCHES = RNG.integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)

# The key layout of timm's VisionTransformer (timm/models/vision_transformer.py: Block, LayerScale,
# GluMlp) that the released UNI / UNI2-h / Virchow 2 / H-optimus-0 / Prov-GigaPath files hold.
BLOCK_KEYS = {f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")} | {"ls1.gamma", "ls2.gamma"}
TOP_KEYS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}

# Shapes at toy size (width 32), worked out by hand from each model's architecture arguments
# (mahmoodlab/TRIDENT load.py): SwiGLU fc1 is int(32 * mlp_ratio) wide and fc2 takes half of it.
TINY_SHAPES = {
    "uni": {"pos_embed": (1, 197, 32), "patch_embed.proj.weight": (32, 3, 16, 16), "blocks.0.mlp.fc1.weight": (128, 32), "blocks.0.mlp.fc2.weight": (32, 128)},
    "uni2_h": {"pos_embed": (1, 256, 32), "reg_token": (1, 8, 32), "patch_embed.proj.weight": (32, 3, 14, 14), "blocks.0.mlp.fc1.weight": (170, 32), "blocks.0.mlp.fc2.weight": (32, 85)},
    "virchow2": {"pos_embed": (1, 261, 32), "reg_token": (1, 4, 32), "blocks.0.mlp.fc1.weight": (170, 32), "blocks.0.mlp.fc2.weight": (32, 85)},
    "h_optimus_0": {"pos_embed": (1, 256, 32), "reg_token": (1, 4, 32), "blocks.1.mlp.fc1.weight": (170, 32), "blocks.1.mlp.fc2.weight": (32, 85)},
    "prov_gigapath": {"pos_embed": (1, 197, 32), "patch_embed.proj.weight": (32, 3, 16, 16), "blocks.0.mlp.fc1.weight": (170, 32), "blocks.0.mlp.fc2.weight": (32, 85)},
    "conch_v1_5": {"trunk.pos_embed": (1, 197, 32), "trunk.blocks.1.ls2.gamma": (32,), "attn_pool_contrast.query": (1, 16), "attn_pool_contrast.to_kv.weight": (32, 32), "ln_contrast.weight": (16,)},
}


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn at random, so LayerScale, registers and every weight matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


def _saved_tiny(name: str, tmp_path, suffix: str = ".bin") -> tuple[nn.Module, dict, object]:
    built = build_preset(PRESETS[name].tiny(), backend="persam")
    state = _randomise(built.weights_target).state_dict()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return built.model.eval(), state, path


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_preset_loads_a_file_in_its_released_key_layout_strictly_and_gives_its_features(name, tmp_path):
    source, state, path = _saved_tiny(name, tmp_path, ".safetensors" if name in ("uni2_h", "conch_v1_5") else ".bin")
    for key, shape in TINY_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key
    if name != "conch_v1_5":
        blocks = {k.split(".", 2)[2] for k in state if k.startswith("blocks.0.")}
        assert blocks == BLOCK_KEYS
        assert {k for k in state if not k.startswith("blocks.")} == TOP_KEYS | ({"reg_token"} if "reg_token" in TINY_SHAPES[name] else set())
    encoder = create_encoder(name, weights=str(path), tiny=True, device="cpu")
    out = encoder(PATCHES)
    assert encoder.dim == PRESETS[name].tiny().dim and out.shape == (2, encoder.dim) and np.isfinite(out).all()
    with torch.no_grad():
        x = preprocess_patches(torch.from_numpy(PATCHES).permute(0, 3, 1, 2), PRESETS[name].preprocess)
        expected = source(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out, create_encoder(name, random_init=True, tiny=True, device="cpu")(PATCHES), atol=1e-3)  # the file was used


def test_full_size_presets_have_the_released_models_dimensions_and_sizes():
    published_millions = {"uni": 303.4, "uni2_h": 681, "virchow2": 632, "h_optimus_0": 1134, "prov_gigapath": 1134, "conch_v1_5": 306}
    shapes = {
        "uni": {"pos_embed": (1, 197, 1024), "blocks.23.ls1.gamma": (1024,)},
        "uni2_h": {"pos_embed": (1, 256, 1536), "reg_token": (1, 8, 1536), "blocks.23.mlp.fc1.weight": (8192, 1536), "blocks.23.mlp.fc2.weight": (1536, 4096)},
        "virchow2": {"pos_embed": (1, 261, 1280), "reg_token": (1, 4, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280), "blocks.31.mlp.fc2.weight": (1280, 3416)},
        "h_optimus_0": {"pos_embed": (1, 256, 1536), "reg_token": (1, 4, 1536), "blocks.39.mlp.fc2.weight": (1536, 4096)},
        "prov_gigapath": {"pos_embed": (1, 197, 1536), "patch_embed.proj.weight": (1536, 3, 16, 16), "blocks.39.mlp.fc1.weight": (8192, 1536)},
        "conch_v1_5": {"trunk.pos_embed": (1, 197, 1024), "attn_pool_contrast.to_kv.weight": (1536, 1024), "ln_contrast.weight": (768,)},
    }
    dims = {"uni": 1024, "uni2_h": 1536, "virchow2": 2560, "h_optimus_0": 1536, "prov_gigapath": 1536, "conch_v1_5": 768}
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            target = build_preset(preset, backend="persam").weights_target
        state = target.state_dict()
        assert preset.dim == dims[name], name
        for key, shape in shapes[name].items():
            assert tuple(state[key].shape) == shape, (name, key)
        millions = sum(p.numel() for p in target.parameters()) / 1e6
        assert millions == pytest.approx(published_millions[name], rel=0.01), name


def test_each_preset_prepares_patches_the_way_its_model_was_trained(tmp_path):
    imagenet = (IMAGENET_MEAN, IMAGENET_STD)
    expected = {  # mahmoodlab/TRIDENT's eval transforms
        "uni": (224, 224, "bilinear", imagenet),
        "uni2_h": (224, 224, "bilinear", imagenet),
        "virchow2": (224, None, "bicubic", imagenet),
        "h_optimus_0": (224, None, "bilinear", ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))),
        "prov_gigapath": (256, 224, "bicubic", imagenet),
        "conch_v1_5": (448, 448, "bilinear", imagenet),
    }
    grey = np.full((1, 512, 512, 3), 128, dtype=np.uint8)
    for name, (resize, crop, interpolation, (mean, std)) in expected.items():
        prep = PRESETS[name].preprocess
        assert (prep.resize, prep.crop, prep.interpolation, prep.mean, prep.std) == (resize, crop, interpolation, mean, std), name
        encoder = create_encoder(name, random_init=True, tiny=True, device="cpu")
        seen = []
        encoder.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
        encoder(grey)
        side = crop or resize
        assert seen[0].shape == (1, 3, side, side), name
        np.testing.assert_allclose(seen[0][0, :, 0, 0].numpy(), (128 / 255 - np.array(mean)) / np.array(std), rtol=1e-5)


def test_resizing_matches_resizing_the_pil_image():
    """Within one 8-bit level of PIL on an image as smooth as tissue (PIL clips between its two
    bicubic passes, so on pure noise a few pixels differ more)."""
    from PIL import Image
    from scipy import ndimage

    image = np.clip(ndimage.gaussian_filter(RNG.normal(128, 60, (256, 256, 3)), (1.5, 1.5, 0)), 0, 255).astype(np.uint8)
    for interpolation, pil in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
        ours = preprocess_patches(torch.from_numpy(image[None]).permute(0, 3, 1, 2), Preprocess(mean=(0, 0, 0), std=(1, 1, 1), resize=224, interpolation=interpolation))
        ref = np.asarray(Image.fromarray(image).resize((224, 224), pil), dtype=np.float32) / 255
        assert np.abs(ours[0].permute(1, 2, 0).numpy() - ref).max() <= 1 / 255 + 1e-6, interpolation
    cropped = preprocess_patches(torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4) * 255 / 15, Preprocess(mean=(0, 0, 0), std=(1, 1, 1), crop=2))
    np.testing.assert_allclose(cropped[0, 0].numpy() * 15, [[5, 6], [9, 10]], atol=1e-5)  # torchvision's CenterCrop


def test_virchow2_reads_the_class_token_and_the_mean_of_patch_tokens_without_registers():
    model = _randomise(VisionTransformer(PRESETS["virchow2"].tiny().vit)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens, out = model.forward_tokens(x), model(x)
    assert tokens.shape == (2, 1 + 4 + 256, 32) and out.shape == (2, 64)
    torch.testing.assert_close(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))
    assert not torch.allclose(out[:, 32:], tokens[:, 1:].mean(1))  # registers are not in the mean


@pytest.mark.parametrize("use_registers", [False, True])
def test_our_vit_matches_transformers_dinov2_with_layerscale_swiglu_and_registers(use_registers):
    """An independent implementation of the same options: HF's Dinov2 (SwiGLU, LayerScale) and
    Dinov2WithRegisters, its weights rearranged into timm's layout, give the same tokens."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, layerscale_value=0.7, layer_norm_eps=1e-6)
    if use_registers:
        hf = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, mlp_ratio=4, **common))
        config = ViTConfig(embed_dim=32, depth=2, heads=2, patch=8, img_size=32, init_values=1.0, reg_tokens=4, readout="cls+mean")
    else:
        hf = Dinov2Model(Dinov2Config(use_swiglu_ffn=True, mlp_ratio=4, **common))  # SwiGLU hidden (int(128 * 2/3) + 7) // 8 * 8 = 88
        config = ViTConfig(embed_dim=32, depth=2, heads=2, patch=8, img_size=32, init_values=1.0, mlp="swiglu_packed", mlp_ratio=176 / 32)
    hf = _randomise(hf).eval()
    src = hf.state_dict()
    pos = src["embeddings.position_embeddings"]
    if use_registers:  # HF adds positions before inserting registers: in timm's layout they get zero positions
        pos = torch.cat([pos[:, :1], torch.zeros(1, 4, 32), pos[:, 1:]], dim=1)
    state = {"cls_token": src["embeddings.cls_token"], "pos_embed": pos, "norm.weight": src["layernorm.weight"], "norm.bias": src["layernorm.bias"],
             "patch_embed.proj.weight": src["embeddings.patch_embeddings.projection.weight"], "patch_embed.proj.bias": src["embeddings.patch_embeddings.projection.bias"]}
    if use_registers:
        state["reg_token"] = src["embeddings.register_tokens"]
    for i in range(2):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            state[b + "attn.qkv." + p] = torch.cat([src[h + f"attention.{n}_proj.{p}"] for n in "qkv"])
            state[b + "attn.proj." + p] = src[h + f"attention.o_proj.{p}"]
            state[b + "norm1." + p], state[b + "norm2." + p] = src[h + "norm1." + p], src[h + "norm2." + p]
            if use_registers:
                state[b + "mlp.fc1." + p], state[b + "mlp.fc2." + p] = src[h + "mlp.fc1." + p], src[h + "mlp.fc2." + p]
            else:  # SwiGLUPacked: gate half first
                state[b + "mlp.fc1." + p] = torch.cat([src[h + "mlp.gate_proj." + p], src[h + "mlp.up_proj." + p]])
                state[b + "mlp.fc2." + p] = src[h + "mlp.down_proj." + p]
        state[b + "ls1.gamma"], state[b + "ls2.gamma"] = src[h + "layer_scale1.lambda1"], src[h + "layer_scale2.lambda1"]
    ours = VisionTransformer(config)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = hf(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.eval().forward_tokens(x), theirs, rtol=1e-4, atol=1e-4)
        expected = torch.cat([theirs[:, 0], theirs[:, 5:].mean(1)], -1) if use_registers else theirs[:, 0]
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)


def test_conch_pooler_and_positions_follow_the_released_code(tmp_path):
    from persam_lib.features.conch import AttentionalPooler

    pooler = _randomise(AttentionalPooler(16, 32, heads=2, queries=1))
    x = torch.randn(3, 10, 32)
    with torch.no_grad():  # TRIDENT's conchv1_5 AttentionalPooler.forward, written out with plain torch
        q = pooler.to_q(pooler.ln_q(pooler.query.expand(3, 1, -1, -1)))  # (b, 1, n_q, d)
        k, v = pooler.to_kv(pooler.ln_k(x[:, None])).chunk(2, dim=-1)
        split = lambda t: t.reshape(*t.shape[:3], 2, 8).permute(0, 3, 1, 2, 4)  # noqa: E731 'b t n (h d) -> b h t n d'
        q, k, v = split(q) * 8 ** -0.5, split(k), split(v)
        sim = torch.einsum("...id,...jd->...ij", q, k)
        out = torch.einsum("...ij,...jd->...id", (sim - sim.amax(-1, keepdim=True)).softmax(-1), v)
        ref = pooler.to_out(out.permute(0, 2, 3, 1, 4).reshape(3, 1, 1, 16)).squeeze(1)
        torch.testing.assert_close(pooler(x), ref)
    table = torch.randn(1, 1 + 196, 8)  # the DINO/iBOT formula: bicubic with scale factor (28 + 0.1) / 14
    ref = F.interpolate(table[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), scale_factor=(28.1 / 14, 28.1 / 14), mode="bicubic")
    torch.testing.assert_close(resample_positions(table, 28, 1, "dino")[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 784, 8))
    # a file whose trunk positions were stored for a 28 x 28 grid is fitted to the model's 14 x 14 (bilinear)
    _, state, _ = _saved_tiny("conch_v1_5", tmp_path)
    big = resample_positions(state["trunk.pos_embed"], 28, 1, "bicubic")
    torch.save({**state, "trunk.pos_embed": big}, tmp_path / "conch_448.bin")
    encoder = create_encoder("conch_v1_5", weights=str(tmp_path / "conch_448.bin"), tiny=True, device="cpu")
    fitted = F.interpolate(big[:, 1:].reshape(1, 28, 28, 32).permute(0, 3, 1, 2), size=(14, 14), mode="bilinear", align_corners=False)
    torch.testing.assert_close(encoder.model.trunk.pos_embed[:, 1:].detach(), fitted.permute(0, 2, 3, 1).reshape(1, 196, 32))


def test_a_wrong_weight_file_is_a_clear_error_naming_the_key(tmp_path):
    _, state, _ = _saved_tiny("uni2_h", tmp_path)
    torch.save({k: v for k, v in state.items() if k != "blocks.1.ls1.gamma"}, tmp_path / "missing.bin")
    with pytest.raises(WeightsError, match=r"missing\.bin: 1 key\(s\) the encoder needs are missing, e\.g\. \['blocks\.1\.ls1\.gamma'\]"):
        create_encoder("uni2_h", weights=str(tmp_path / "missing.bin"), tiny=True)
    torch.save({**state, "reg_token": torch.zeros(1, 4, 32)}, tmp_path / "shape.bin")
    with pytest.raises(WeightsError, match=r"'reg_token' has shape \(1, 4, 32\) but the encoder expects \(1, 8, 32\)"):
        create_encoder("uni2_h", weights=str(tmp_path / "shape.bin"), tiny=True)
    _, uni, uni_path = _saved_tiny("uni", tmp_path)  # another model's file
    with pytest.raises(WeightsError, match=r"missing, e\.g\. \['reg_token'\]; is this the right architecture"):
        create_encoder("uni2_h", weights=str(uni_path), tiny=True)
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(WeightsError, match="notes.txt: could not be read as a PyTorch state dict"):
        create_encoder("uni", weights=str(tmp_path / "notes.txt"), tiny=True)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="could not be read as a safetensors file"):
        create_encoder("uni", weights=str(tmp_path / "broken.safetensors"), tiny=True)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        create_encoder("uni", weights=str(tmp_path / "list.pt"), tiny=True)
    torch.save({"epoch": 3, **uni}, tmp_path / "epoch.pth")
    with pytest.raises(WeightsError, match="not a state dict of tensors: 'epoch' holds a int"):
        create_encoder("uni", weights=str(tmp_path / "epoch.pth"), tiny=True)
    with pytest.raises(WeightsError, match=r"needs weights: download pytorch_model\.bin from MahmoodLab/UNI.*Nothing is downloaded"):
        create_encoder("uni")


class _RaisingFinder(importlib.abc.MetaPathFinder):
    """Makes ``import timm`` fail the way it does beside a CPU torch: an OSError from torchvision."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "timm":
            raise OSError("libc10_cuda.so: cannot open shared object file")
        return None


def test_the_timm_check_imports_timm_and_the_presets_fall_back_to_our_vit(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    assert not timm_available() and "import of timm halted" in timm_import_error()
    assert "timm:<model name>" not in available_encoders()
    _, _, path = _saved_tiny("virchow2", tmp_path)
    encoder = create_encoder("virchow2", weights=str(path), tiny=True, device="cpu")
    assert isinstance(encoder.model, VisionTransformer)
    with pytest.raises(ValueError, match="needs timm, which cannot be imported here"):
        create_encoder("timm:vit_small_patch16_224", random_init=True)
    monkeypatch.delitem(sys.modules, "timm")
    monkeypatch.setattr(sys, "meta_path", [_RaisingFinder(), *sys.meta_path])  # found on disk, fails to import
    assert not timm_available() and timm_import_error().startswith("OSError")
    assert isinstance(create_encoder("uni", random_init=True, tiny=True, device="cpu").model, VisionTransformer)


# timm's architecture defaults (timm/models/vision_transformer.py) under TRIDENT's keyword arguments
# (trident/patch_encoder_models/load.py): together, what timm.create_model really builds for each preset.
TIMM_DEFAULTS = {"img_size": 224, "mlp_ratio": 4.0, "init_values": None, "reg_tokens": 0, "no_embed_class": False, "mlp_layer": "Mlp", "act_layer": "GELU"}
TIMM_ARCH = {
    "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_giant_patch14_224": dict(patch_size=14, embed_dim=1408, mlp_ratio=48 / 11, depth=40, num_heads=16),
    "vit_huge_patch14_224": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "vit_giant_patch14_dinov2": dict(patch_size=14, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="SwiGLUPacked", act_layer="SiLU"),
    "vit_giant_patch14_reg4_dinov2": dict(patch_size=14, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="SwiGLUPacked", act_layer="SiLU", reg_tokens=4, no_embed_class=True),
}
TRIDENT = {
    "uni": ("vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)),
    "uni2_h": ("vit_giant_patch14_224", dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer="SwiGLUPacked", act_layer="SiLU", reg_tokens=8, dynamic_img_size=True)),
    "virchow2": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, dynamic_img_size=True, mlp_layer="SwiGLUPacked", act_layer="SiLU")),
    "h_optimus_0": ("vit_giant_patch14_reg4_dinov2", dict(num_classes=0, img_size=224, init_values=1e-5, dynamic_img_size=True)),
    "prov_gigapath": ("vit_giant_patch14_dinov2", dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True)),
}


class _FakeTimmViT(VisionTransformer):
    """Stands in for timm's model: our ViT, with timm's ``forward_features`` and ``num_prefix_tokens``."""

    def forward_features(self, x):
        return self.forward_tokens(x)


def _fake_timm(calls: list) -> types.ModuleType:
    timm = types.ModuleType("timm")
    timm.layers = types.SimpleNamespace(SwiGLUPacked="SwiGLUPacked", Mlp="Mlp")

    def create_model(arch, pretrained=False, **kwargs):
        calls.append((arch, pretrained, kwargs))
        swiglu = kwargs["mlp_layer"] == "SwiGLUPacked"
        return _FakeTimmViT(ViTConfig(
            embed_dim=kwargs["embed_dim"], depth=kwargs["depth"], heads=kwargs["num_heads"], patch=kwargs["patch_size"], img_size=kwargs["img_size"],
            mlp_ratio=kwargs["mlp_ratio"], mlp="swiglu_packed" if swiglu else "gelu", init_values=kwargs["init_values"],
            reg_tokens=kwargs["reg_tokens"], no_embed_class=kwargs["no_embed_class"], pos_resample="timm",
        ))

    timm.create_model = create_model
    return timm


@pytest.mark.parametrize("name", sorted(TRIDENT))
def test_when_timm_imports_the_presets_are_built_by_timm_with_tridents_arguments(name, monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setitem(sys.modules, "timm", _fake_timm(calls))
    monkeypatch.setitem(sys.modules, "timm.layers", sys.modules["timm"].layers)
    assert timm_available()
    arch, trident = TRIDENT[name]
    preset = PRESETS[name]
    reference = {**TIMM_DEFAULTS, **TIMM_ARCH[arch], **trident}
    reference.pop("in_chans", None)
    with torch.device("meta"):  # full size is never instantiated: only the arguments are checked
        built = build_preset(preset)
    assert isinstance(built.model, TimmTokens) and built.backend == "timm"
    got_arch, pretrained, kwargs = calls[-1]
    kwargs = {k: (v.__name__ if isinstance(v, type) else v) for k, v in kwargs.items()}
    assert (got_arch, pretrained) == (arch, False)
    assert kwargs == reference
    # the same file gives the same features through timm's path as through our own ViT
    source, _, path = _saved_tiny(name, tmp_path)
    via_timm = create_encoder(name, weights=str(path), tiny=True, device="cpu")
    assert isinstance(via_timm.model, TimmTokens)
    ours = create_encoder(name, weights=str(path), tiny=True, device="cpu", backend="persam")
    np.testing.assert_allclose(via_timm(PATCHES), ours(PATCHES), rtol=1e-5, atol=1e-6)


# --- hf:<folder> -----------------------------------------------------------------------------------------


def _tiny_hf(kind: str, folder, preprocessor: dict | None = None) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ViTConfig as HFViTConfig, ViTModel

    torch.manual_seed(1)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    model = {
        "vit": lambda: ViTModel(HFViTConfig(intermediate_size=64, **common), add_pooling_layer=False),
        "dinov2": lambda: Dinov2Model(Dinov2Config(**common)),
        "dinov2_with_registers": lambda: Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **common)),
    }[kind]()
    model = _randomise(model).eval()
    model.save_pretrained(folder)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


@pytest.mark.parametrize("kind", ["vit", "dinov2", "dinov2_with_registers"])
def test_hf_folder_loads_strictly_offline_with_its_readout_and_dimension(kind, tmp_path, monkeypatch):
    source = _tiny_hf(kind, tmp_path / kind)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    encoder = create_encoder(f"hf:{tmp_path / kind}", device="cpu")
    patches = RNG.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)  # at the model's image_size: no resize
    x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = source(pixel_values=x).last_hidden_state
    assert encoder.dim == 32 and encoder.name == f"hf:{tmp_path / kind}"
    assert encoder.preprocess == Preprocess(resize=32, interpolation="bilinear" if kind == "vit" else "bicubic")
    np.testing.assert_allclose(encoder(patches), tokens[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    both = create_encoder(f"hf:{tmp_path / kind}@cls+mean", device="cpu")
    prefix = 5 if kind == "dinov2_with_registers" else 1
    assert both.dim == 64
    np.testing.assert_allclose(both(patches), torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], -1).numpy(), rtol=1e-4, atol=1e-5)


def test_hf_loading_is_local_only_and_takes_preprocessing_from_the_folder(tmp_path, monkeypatch):
    _tiny_hf("dinov2", tmp_path / "m", {
        "do_resize": True, "size": {"shortest_edge": 40}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
    })
    from transformers import AutoModel

    seen = {}
    real = AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", spy)
    encoder = create_encoder(f"hf:{tmp_path / 'm'}", device="cpu")
    assert seen["local_files_only"] is True and seen["trust_remote_code"] is False
    assert encoder.preprocess == Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize=40, crop=32, interpolation="bilinear")
    inputs = []
    encoder.model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    encoder(np.full((1, 256, 256, 3), 51, dtype=np.uint8))
    assert inputs[0].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(inputs[0][0, :, 5, 5].numpy(), (0.2 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3]), rtol=1e-5)


def test_a_folder_that_is_not_a_vision_model_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    with pytest.raises(WeightsError, match="not a folder on this machine. Nothing is downloaded: Save the model there with model.save_pretrained"):
        create_encoder("hf:owkin/phikon")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has no config.json, so it is not a saved transformers model"):
        create_encoder(f"hf:{tmp_path / 'empty'}")
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(WeightsError, match="model_type 'bert', which is not a vision model.*supported: vit, dinov2, dinov2_with_registers"):
        create_encoder(f"hf:{tmp_path / 'bert'}")
    _tiny_hf("vit", tmp_path / "vit")
    weights = tmp_path / "vit" / "model.safetensors"
    state = load_file(str(weights))
    key = "encoder.layer.0.output.dense.weight"  # the MLP's second layer, (32, 64)
    save_file({**state, key: torch.zeros(3, 3)}, str(weights), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"has shape \(3, 3\) but the model expects \(32, 64\)"):
        create_encoder(f"hf:{tmp_path / 'vit'}")
    save_file({k: v for k, v in state.items() if k != key}, str(weights), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"1 weight\(s\) the model needs are missing from the folder"):
        create_encoder(f"hf:{tmp_path / 'vit'}")
    weights.unlink()
    with pytest.raises(WeightsError, match="the model could not be loaded from the folder"):
        create_encoder(f"hf:{tmp_path / 'vit'}")
    with pytest.raises(ValueError, match="reads its weights from the folder; drop --weights"):
        create_encoder(f"hf:{tmp_path / 'vit'}", weights="x.bin")


def test_persam_extract_runs_an_hf_folder_end_to_end(tiny_cohort, tmp_path):
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.extract import extract
    from persam_lib.features.store import feature_path, read_features

    _tiny_hf("dinov2_with_registers", tmp_path / "model")
    name = f"hf:{tmp_path / 'model'}@cls+mean"
    slide_ids = list(tiny_cohort.slides["slide_id"])
    summary = extract(tiny_cohort, tmp_path / "features", ExtractConfig(encoder=name, num_workers=0), progress=False)
    assert not summary.failed
    data = read_features(feature_path(tmp_path / "features", slide_ids[0]))
    assert data.encoder == name and data.features.shape[1] == 64 and len(data.features) == len(data.coords) > 0


def test_an_hf_folders_weights_are_recorded_by_digest(tmp_path):
    """Two save_pretrained folders of one name with other weights get other settings records."""
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.settings import extraction_settings

    _tiny_hf("vit", tmp_path / "a" / "phikon")
    first = extraction_settings(ExtractConfig(encoder=f"hf:{tmp_path / 'a' / 'phikon'}"))["encoder_weights_sha256"]
    assert len(first) == 64 and first == extraction_settings(ExtractConfig(encoder=f"hf:{tmp_path / 'a' / 'phikon'}"))["encoder_weights_sha256"]
    model = _tiny_hf("vit", tmp_path / "b" / "phikon")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "b" / "phikon")
    assert extraction_settings(ExtractConfig(encoder=f"hf:{tmp_path / 'b' / 'phikon'}"))["encoder_weights_sha256"] != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        extraction_settings(ExtractConfig(encoder=f"hf:{tmp_path / 'empty'}"))
