"""Setting configurations by name: --set NAME=VALUE and --config FILE.yaml (persam_lib.options)."""
import pytest

from persam_lib.cli import main
from persam_lib.models.base import ModelSettings
from persam_lib.options import configure, describe, parse_assignments, with_overrides
from persam_lib.train.loop import TrainConfig


def test_fields_are_set_by_name_with_their_types():
    original = TrainConfig(lr=0.5, epochs=3)
    config = with_overrides(original, {"lr": "1e-4", "epochs": "7", "use_position": "yes", "patch_attention": "full", "dropout": 0.25})
    assert (config.lr, config.epochs) == (1e-4, 7)
    assert config.model_settings == ModelSettings(use_position=True, patch_attention="full", dropout=0.25)  # the model settings' own part
    assert (original.lr, original.epochs, original.model_settings) == (0.5, 3, ModelSettings())  # the original is untouched
    assert with_overrides(original, {}) == original
    assert with_overrides(original, {"use_position": "off"}).model_settings.use_position is False


def test_unknown_names_and_bad_values_say_what_is_expected():
    listing = r"Options are: model, n_folds, .*label_smoothing, .*device; model settings \(ModelSettings\): d_model, .*grid_cell, ehr_stages, norm, class_token_reads, record_tokens\."
    with pytest.raises(ValueError, match=f"unknown TrainConfig option 'lrr'. {listing}"):
        with_overrides(TrainConfig(), {"lrr": "1"})
    with pytest.raises(ValueError, match="unknown TrainConfig option 'model_settings'"):  # the part is reached through its fields' names
        with_overrides(TrainConfig(), {"model_settings": "x"})
    with pytest.raises(ValueError, match="'epochs' must be an int. Got 'ten' instead"):
        with_overrides(TrainConfig(), {"epochs": "ten"})
    with pytest.raises(ValueError, match="'use_position' must be true or false"):
        with_overrides(TrainConfig(), {"use_position": "maybe"})
    with pytest.raises(ValueError, match=r"The training option 'label_smoothing' must be a float in \[0, 1\). Got 1.5 instead"):
        with_overrides(TrainConfig(), {"label_smoothing": "1.5"})
    with pytest.raises(ValueError, match=r"The model setting 'dropout' must be a float in \[0, 1\). Got 1.5 instead"):
        with_overrides(TrainConfig(), {"dropout": "1.5"})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignments(["lr"])


def test_yaml_file_then_assignments(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lr: 0.001\ndropout: 0.3\nepochs: 12\nd_model: 32\n")
    config = configure(TrainConfig(), path, ["dropout=0.2"])
    assert (config.lr, config.epochs, config.model_settings.dropout, config.model_settings.d_model) == (0.001, 12, 0.2, 32)  # --set comes after the file
    path.write_text("epochs: 2.5\n")
    with pytest.raises(ValueError, match=f"{path}: The TrainConfig option 'epochs' must be an int"):
        configure(TrainConfig(), path)
    path.write_text("- lr\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        configure(TrainConfig(), path)


def test_describe_lists_every_name_with_the_dataclass_default():
    text = describe(TrainConfig())
    assert "lr=0.003" in text and "d_model=64" in text and "grid_cell=16" in text and "ehr_stages=3,4" in text
    assert "model_settings" not in text and "patch_size" not in text


def test_cli_rejects_a_bad_option_before_training(tiny_cohort, tmp_path, capsys):
    code = main(["train", str(tiny_cohort.manifest_path), "--features", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--set", "n_heads=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'d_model' must be an int divisible by n_heads (3)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
