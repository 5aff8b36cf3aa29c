"""One config type per concern: training knobs on TrainConfig, model settings on ModelSettings
(the user's part of ModelConfig), each declared and checked once, and every default in one place."""
import dataclasses
import json
import re
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from persam_lib.cli import main
from persam_lib.models import MODEL_INFO, Batch, ModelConfig, ModelSettings, available_models, check_settings, create_model, settings_for
from persam_lib.options import configure, with_overrides
from persam_lib.train.loop import TrainConfig
from persam_lib.train.run import Run, comparison_configs

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ModelSettings.names()
DATA_FIELDS = {"feature_dim", "n_classes", "field_cardinalities", "input_kind", "record_groups"}  # what the data decides
# a valid value other than the default for every setting (what a user might --set)
OTHER = {
    "d_model": 32, "n_heads": 2, "n_layers": 3, "mlp_ratio": 4.0, "dropout": 0.3, "use_position": True, "patch_attention": "full",
    "checkpoint_activations": True, "radiomics_iterations": 3, "region_fraction": 0.5, "image_size": 64, "grid_cell": 8, "ehr_stages": "2", "norm": "pre", "record_tokens": "group", "class_token_reads": "all",
}
KINDS = [(name, kind) for name in sorted(MODEL_INFO) for kind in MODEL_INFO[name].inputs]


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_model_setting_is_declared_once():
    assert set(OTHER) == set(SETTINGS)  # this test knows every setting
    assert not _names(TrainConfig) & set(SETTINGS), "a model setting is declared on TrainConfig too"
    own = set(ModelConfig.__annotations__)  # fields ModelConfig declares itself, not inherited
    assert own == DATA_FIELDS and _names(ModelConfig) == set(SETTINGS) | DATA_FIELDS
    assert TrainConfig().model_settings == ModelSettings()  # TrainConfig holds one, with the same defaults


def test_model_settings_are_checked_where_they_are_declared():
    with pytest.raises(ValueError, match="The model setting 'n_layers' must be an int >= 1. Got 0 instead"):
        ModelSettings(n_layers=0)
    with pytest.raises(ValueError, match="The model setting 'd_model' must be an int divisible by n_heads"):
        TrainConfig.of(d_model=30)  # reached through TrainConfig, checked by ModelSettings
    with pytest.raises(ValueError, match="'image_size' must be a multiple of grid_cell \\(16\\)"):
        ModelConfig(feature_dim=1, n_classes=2, image_size=72)
    with pytest.raises(TypeError, match="model_settings must be a ModelSettings"):
        TrainConfig(model_settings=ModelConfig(feature_dim=1, n_classes=2))  # data-derived fields do not belong to a training config


def test_set_reaches_the_config_that_owns_each_name(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("epochs: 4\nn_layers: 3\n")
    config = configure(TrainConfig(), path, ["lr=1e-3", "d_model=32", "patch_attention=full", "augment=false"])
    assert (config.lr, config.epochs, config.augment) == (1e-3, 4, False)
    assert config.model_settings == ModelSettings(d_model=32, n_layers=3, patch_attention="full")
    assert TrainConfig.of(lr=1e-3, d_model=32) == replace(TrainConfig(lr=1e-3), model_settings=ModelSettings(d_model=32))
    assert TrainConfig.for_modality("images", d_model=32).model_settings.d_model == 32


def test_a_run_records_and_the_checkpoint_stores_both_kinds_of_setting(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "run"
    args = ["--folds", "2", "--epochs", "1", "--set", "d_model=8", "--set", "n_heads=2", "--set", "n_layers=1", "--set", "lr=1e-3", "--set", "val_fraction=0.25"]
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "persam", "--out", str(out), *args]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["lr"], recorded["d_model"], recorded["n_layers"], recorded["model"]) == (1e-3, 8, 1, "persam") and "grid_cell" in recorded and "model_settings" not in recorded
    run = Run(out)
    assert run.config.model_settings.d_model == 8 and run.config.lr == 1e-3
    loaded = run.model_for_fold(0)
    assert (loaded.config.d_model, len(loaded.model.blocks)) == (8, 1) and loaded.config.settings() == run.config.model_settings


@pytest.mark.parametrize(("model", "setting", "value", "kind"), [("transmil", "patch_attention", "full", "features"), ("persam", "ehr_stages", "2", "features"), ("persam", "ehr_stages", "2", "image"), ("clinical_only", "image_size", 64, "image"), ("abmil", "n_layers", 3, "features")])
def test_a_setting_the_model_does_not_read_is_an_error_naming_it(model, setting, value, kind):
    readers = [m for m in available_models() if setting in MODEL_INFO[m].settings_read("image") | MODEL_INFO[m].settings_read("features")]
    with pytest.raises(ValueError, match=f"{model} on .* does not read the model setting\\(s\\) '{setting}' \\(read .*{readers[0]}") as err:
        check_settings(model, ModelSettings(**{setting: value}), kind)
    assert f"Remove {setting}=" in str(err.value)


def test_the_cli_refuses_an_unread_setting_before_writing_anything(tiny_cohort, tiny_features, tmp_path, capsys):
    code = main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "transmil", "--out", str(tmp_path / "run"), "--set", "patch_attention=full"])
    err = capsys.readouterr().err
    assert code == 2 and "transmil on slides does not read the model setting(s) 'patch_attention' (read by persam)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_defaults_never_trip_the_check(name, kind):
    check_settings(name, ModelSettings(), kind)
    check_settings(name, TrainConfig.for_modality("images" if kind == "image" else "slides").model_settings, kind)


def _model(name: str, kind: str, **settings):
    torch.manual_seed(0)
    data = {"feature_dim": 1, "input_kind": "image"} if kind == "image" else {"feature_dim": 12}
    base = {"image_size": 128, "grid_cell": 16} if kind == "image" else {}  # 2-D: a grid every OTHER value fits
    return create_model(name, ModelConfig(n_classes=3, field_cardinalities=(0, 2, 3), **(base | data | settings)))


def _input(kind: str) -> Batch:
    g = torch.Generator().manual_seed(1)
    codes, values = torch.tensor([[1, 1, 2], [1, 2, 3]]), torch.randn(2, 3, generator=g)
    if kind == "image":
        return Batch.of_images(torch.randn(2, 1, 128, 128, generator=g), codes, values)
    cells = torch.stack([torch.randperm(36, generator=g)[:20] for _ in range(2)])
    return Batch(torch.randn(2, 20, 12, generator=g), torch.ones(2, 20, dtype=torch.bool), torch.stack([cells % 6, cells // 6], -1) * 256, codes, values)


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_the_registry_declares_every_setting_each_model_reads(name, kind):
    """Changing a setting a model does not declare leaves its weights and its output (in training
    mode, so dropout counts) unchanged: the declarations are what the code reads."""
    read = MODEL_INFO[name].settings_read(kind)
    assert read <= set(SETTINGS)
    reference = _model(name, kind)
    weights = {k: v.clone() for k, v in reference.state_dict().items()}  # before a forward pass moves BatchNorm's statistics
    batch = _input(kind)
    torch.manual_seed(2)
    expected = reference.train()(batch).logits
    for setting in sorted(set(SETTINGS) - read):
        if kind == "image" and setting in ("image_size", "grid_cell"):  # the input itself would change; clinical_only, the one model that ignores both, is checked below
            continue
        changed = _model(name, kind, **{setting: OTHER[setting]})
        assert changed.state_dict().keys() == weights.keys(), setting
        assert all(torch.equal(changed.state_dict()[k], v) for k, v in weights.items()), setting
        torch.manual_seed(2)
        torch.testing.assert_close(changed.train()(batch).logits, expected, rtol=0, atol=0, msg=f"{name} reads {setting}")


def test_the_one_image_model_without_pixels_declares_none_of_their_settings():
    assert not MODEL_INFO["clinical_only"].settings_read("image") & {"image_size", "grid_cell"}
    assert all({"image_size", "grid_cell"} <= MODEL_INFO[m].settings_read("image") for m in available_models("image") if MODEL_INFO[m].reads_image)


def test_a_declared_setting_changes_the_model():
    """The other direction, for the settings a change shows in the weights or the output."""
    assert _model("persam", "features", n_layers=3).state_dict().keys() != _model("persam", "features").state_dict().keys()
    assert "position.weight" in _model("persam", "features", use_position=True).state_dict()
    assert _model("mma_mgmu", "image", ehr_stages="2").gates.keys() != _model("mma_mgmu", "image").gates.keys()
    assert _model("chexradinet", "features", radiomics_iterations=3).guidance.iterations == 3


def test_compare_gives_each_model_the_settings_it_reads():
    base = TrainConfig.of(d_model=32, n_layers=1, patch_attention="full", epochs=3)
    configs = comparison_configs(base, ["persam", "abmil", "transmil"], "features")
    assert configs["persam"].model_settings == ModelSettings(d_model=32, n_layers=1, patch_attention="full")
    assert configs["abmil"].model_settings == ModelSettings(d_model=32) and configs["transmil"].model_settings == ModelSettings(d_model=32)
    assert all(c.epochs == 3 and c.model == m for m, c in configs.items())  # training knobs are shared as they are
    with pytest.raises(ValueError, match="none of abmil, transmil on slides reads the model setting\\(s\\) 'n_layers' \\(read by persam, persam_paper\\)"):
        comparison_configs(base, ["abmil", "transmil"], "features")
    assert settings_for("clinical_only", ModelSettings(image_size=64), "image") == ModelSettings()


def test_the_old_patch_size_name_works_with_a_deprecation_message():
    with pytest.warns(FutureWarning, match="the option 'patch_size' is now called 'grid_cell'; 'patch_size' still works for now but will be removed"):
        config = with_overrides(TrainConfig(), {"patch_size": "8"}, source="--set")
    assert config.model_settings.grid_cell == 8 and config == TrainConfig.of(grid_cell=8)
    with pytest.raises(ValueError, match="both 'patch_size' .* and 'grid_cell' are set"):
        with_overrides(TrainConfig(), {"patch_size": "8", "grid_cell": "8"})


def test_the_command_line_prints_the_deprecation_once(tiny_cohort, tmp_path):
    """The installed `persam`, with the old name in a --config file and on --set: one message, and
    the setting then goes by its new name (here refused, as PersAM on slides does not read it)."""
    script = Path(sys.executable).parent / "persam"
    options = tmp_path / "options.yaml"
    options.write_text("patch_size: 8\n")
    result = subprocess.run([str(script), "train", str(tiny_cohort.manifest_path), "--features", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--config", str(options), "--set", "patch_size=8"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("'patch_size' is now called 'grid_cell'") == 1, result.stderr
    assert "does not read the model setting(s) 'grid_cell'" in result.stderr and not (tmp_path / "run").exists()


def test_a_checkpoint_saved_with_the_old_key_loads(tmp_path):
    from persam_lib.cohort.schema import FieldSchema, FieldSpec, LabelSpec
    from persam_lib.models.clinical import RecordEncoder
    from persam_lib.train.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
    from persam_lib.train.data import FeatureNormaliser
    import numpy as np

    encoder = RecordEncoder(FieldSchema((FieldSpec("sex", "categorical", ("F", "M")),), LabelSpec("y", ("a", "b"))))
    config = ModelConfig(feature_dim=1, n_classes=2, field_cardinalities=encoder.cardinalities, d_model=16, n_heads=2, input_kind="image", image_size=32, grid_cell=8, ehr_stages="2,3")
    model = create_model("mma_mgmu", config).eval()
    path = save_checkpoint(tmp_path / "new.pt", LoadedModel("mma_mgmu", model, config, encoder, FeatureNormaliser(np.zeros(1, np.float32), np.ones(1, np.float32))))
    state = torch.load(path, weights_only=False)
    old = dict(state["model_config"])
    old["patch_size"] = old.pop("grid_cell")  # as written before the rename
    for name in ("mlp_ratio", "region_fraction"):
        assert name in old  # (settings the old ModelConfig had too)
    state["model_config"] = old
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config == config
    batch = Batch.of_images(torch.randn(2, 1, 32, 32), torch.tensor([[1], [2]]), torch.zeros(2, 1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_config_json_round_trips_and_old_ones_load(tmp_path):
    config = TrainConfig.of(model="mma_mgmu", epochs=7, lr=1e-3, augment=False, d_model=32, grid_cell=8, ehr_stages="2,3", use_position=True)
    stored = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(stored) == config
    assert set(stored) == (_names(TrainConfig) - {"model_settings"}) | set(SETTINGS)  # flat: the names --set takes
    old = {k: v for k, v in stored.items() if k not in ("grid_cell", "mlp_ratio", "region_fraction")} | {"patch_size": 8}  # written before the rename
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    (run / "schema.json").write_text(json.dumps({"label": {"classes": ["a", "b"]}}))
    assert Run(run).config == config
    with pytest.raises(ValueError, match="both 'patch_size' .* and 'grid_cell'"):
        TrainConfig.from_dict(old | {"grid_cell": 16})


def _readme_rows() -> list[tuple[list[str], list[str], str]]:
    """(names, defaults, read by) of each row of README's two option tables."""
    text = (ROOT / "README.md").read_text()
    start = text.index("Training options (`TrainConfig`):")
    rows = []
    for line in text[start : text.index("```bash", start)].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`(\w+)`", cells[0]), [d.strip().strip("`") for d in cells[1].split(", ")] if "," in cells[1] and not cells[1].startswith("`3") else [cells[1].strip("`")], cells[2] if len(cells) == 4 else ""))
    return rows


def _same(text: str, value) -> bool:
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)):
        return float(text) == value
    return text == value


def test_the_readme_tables_show_the_dataclass_defaults():
    rows = _readme_rows()
    named = [name for names, _, _ in rows for name in names]
    assert sorted(named) == sorted((_names(TrainConfig) - {"model", "model_settings"}) | set(SETTINGS))  # every option once
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | {f.name: f.default for f in dataclasses.fields(ModelSettings)}
    for names, values, read_by in rows:
        assert len(names) == len(values), names
        for name, value in zip(names, values):
            assert _same(value, defaults[name]), f"README says {name} defaults to {value}, the dataclass says {defaults[name]!r}"
        for model in re.findall(r"\b[a-z_]+\b", read_by):
            if model in MODEL_INFO:
                assert all(n in MODEL_INFO[model].settings_read("features") | MODEL_INFO[model].settings_read("image") for n in names), (model, names)
