import numpy as np
import pytest
import torch

from persam_lib.features.encoders import available_encoders, create_encoder
from persam_lib.features.torch_encoder import WeightsError

# A sample of the keys torchvision's resnet50().state_dict() and timm's vit_small_patch16_224 have.
TORCHVISION_RESNET50_KEYS = ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias", "layer2.3.conv3.weight", "layer3.5.bn3.running_var"]
TIMM_VIT_S16_KEYS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "blocks.5.norm2.weight", "norm.bias"]


@pytest.mark.parametrize("name, keys, extra, dim", [
    ("resnet50_trunc", TORCHVISION_RESNET50_KEYS, {"layer4.0.conv1.weight": torch.zeros(512, 1024, 1, 1), "fc.weight": torch.zeros(1000, 2048)}, 1024),
    ("vit_s16", TIMM_VIT_S16_KEYS, {"head.weight": torch.zeros(1000, 384), "head.bias": torch.zeros(1000)}, 384),
])
def test_weights_in_the_usual_layout_load_and_give_the_same_features(name, keys, extra, dim, tmp_path):
    torch.manual_seed(0)
    source = create_encoder(name, random_init=True, device="cpu")
    state = source.model.state_dict()
    assert set(keys) <= set(state)
    full = {**state, **extra}  # a full torchvision / timm file also holds the parts we cut off
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.items()}}, path)
    loaded = create_encoder(name, weights=str(path), device="cpu")
    patches = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    a, b = source(patches), loaded(patches)
    assert a.shape == (2, dim) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_shape_mismatch_names_the_key(tmp_path):
    state = create_encoder("resnet50_trunc", random_init=True, device="cpu").model.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"'layer2.0.conv1.weight' has shape \(3, 3, 1, 1\) but the encoder expects \(128, 256, 1, 1\)"):
        create_encoder("resnet50_trunc", weights=str(tmp_path / "bad.pth"))


def test_wrong_architecture_and_missing_file_are_clear(tmp_path):
    vit = create_encoder("vit_s16", random_init=True, device="cpu").model.state_dict()
    torch.save(vit, tmp_path / "vit.pth")
    with pytest.raises(WeightsError, match="key\\(s\\) the encoder needs are missing.*right architecture"):
        create_encoder("resnet50_trunc", weights=str(tmp_path / "vit.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        create_encoder("vit_s16", weights=str(tmp_path / "absent.pth"))
    with pytest.raises(WeightsError, match="needs weights.*Nothing is downloaded"):
        create_encoder("vit_s16")


def test_registry_lists_encoders(monkeypatch):
    import sys

    from persam_lib.features.encoders import PRESET_NAMES
    from persam_lib.features.presets import PRESETS

    monkeypatch.setitem(sys.modules, "timm", None)  # the list below is the one without timm

    assert {"stats", "resnet50_trunc", "vit_s16", "hf:<folder>", *PRESETS} <= set(available_encoders())
    assert sorted(PRESET_NAMES) == sorted(PRESETS)  # the registry offers every preset, and only those
    with pytest.raises(ValueError, match="Available encoders: conch_v1_5, h_optimus_0, hf:<folder>, prov_gigapath, resnet50_trunc, stats, uni, uni2_h, virchow2, vit_s16"):
        create_encoder("resnet9000")
    with pytest.raises(ValueError, match="The 'stats' encoder has no weights"):
        create_encoder("stats", weights="x.pth")


def test_vit_interpolates_positions_for_256_pixel_patches():
    encoder = create_encoder("vit_s16", random_init=True, device="cpu")
    out = encoder(np.zeros((1, 256, 256, 3), dtype=np.uint8))
    assert out.shape == (1, 384) and np.isfinite(out).all()


def _write_foreign(path, n, dim, attrs=None):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.random.rand(n, dim).astype(np.float32))
        coords = f.create_dataset("coords", data=np.arange(n * 2).reshape(n, 2) * 512)
        for k, v in (attrs or {}).items():
            coords.attrs[k] = v


def test_import_clam_and_trident_layouts(tiny_cohort, tmp_path):
    from persam_lib.cli import main
    from persam_lib.features.importing import import_features
    from persam_lib.features.store import read_features

    ids = list(tiny_cohort.slides["slide_id"])
    clam = tmp_path / "clam"
    for sid in ids[:-1]:  # the last slide has no features
        _write_foreign(clam / "h5_files" / f"{sid}.h5", 5, 1024, {"patch_size": 256, "patch_level": 0, "downsample": [2.0, 2.0]})
    _write_foreign(clam / "h5_files" / "stranger.h5", 3, 1024)
    summary = import_features(tiny_cohort, clam, tmp_path / "out", "clam")
    assert sorted(summary.imported) == sorted(ids[:-1]) and summary.missing == [ids[-1]] and summary.unmatched == ["stranger"]
    data = read_features(tmp_path / "out" / f"{ids[0]}.h5")
    assert data.features.shape == (5, 1024) and data.patch_size_level0 == 512 and data.slide_id == ids[0]
    assert main(["import-features", str(clam), "--format", "clam", "--manifest", str(tiny_cohort.manifest_path), "--out", str(tmp_path / "out")]) == 1  # a slide is missing

    trident = tmp_path / "trident" / "features_uni_v1"
    for sid in ids:
        _write_foreign(trident / f"{sid}.h5", 4, 16, {"patch_size": 256, "patch_size_level0": 512})
    _write_foreign(trident / f"{ids[2]}.h5", 4, 8)  # a different encoder's dimension
    summary = import_features(tiny_cohort, tmp_path / "trident", tmp_path / "out2", "trident")
    assert list(summary.failed) == [ids[2]] and "dimension 8" in summary.failed[ids[2]]
    assert len(summary.imported) == len(ids) - 1
