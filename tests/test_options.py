import pytest

from persam_lib.cli import main
from persam_lib.options import configure, parse_assignments, with_overrides
from persam_lib.train.loop import TrainConfig


def test_fields_are_set_by_name_with_their_types():
    original = TrainConfig(lr=0.5, epochs=3)
    config = with_overrides(original, {"lr": "1e-4", "epochs": "7", "use_position": "yes", "patch_attention": "full", "dropout": 0.25})
    assert (config.lr, config.epochs, config.use_position, config.patch_attention, config.dropout) == (1e-4, 7, True, "full", 0.25)
    assert (original.lr, original.epochs, original.dropout) == (0.5, 3, TrainConfig().dropout)  # the original is untouched
    assert with_overrides(original, {}) == original


def test_unknown_names_and_bad_values_say_what_is_expected():
    with pytest.raises(ValueError, match="unknown TrainConfig option 'lrr'. Options are: model, n_folds, .*label_smoothing"):
        with_overrides(TrainConfig(), {"lrr": "1"})
    with pytest.raises(ValueError, match="'epochs' must be an int. Got 'ten' instead"):
        with_overrides(TrainConfig(), {"epochs": "ten"})
    with pytest.raises(ValueError, match="'use_position' must be true or false"):
        with_overrides(TrainConfig(), {"use_position": "maybe"})
    with pytest.raises(ValueError, match=r"'label_smoothing' must be a float in \[0, 1\). Got 1.5 instead"):
        with_overrides(TrainConfig(), {"label_smoothing": "1.5"})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignments(["lr"])


def test_yaml_file_then_assignments(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lr: 0.001\ndropout: 0.3\nepochs: 12\n")
    config = configure(TrainConfig(), path, ["dropout=0.2"])
    assert (config.lr, config.dropout, config.epochs) == (0.001, 0.2, 12)
    path.write_text("epochs: 2.5\n")
    with pytest.raises(ValueError, match=f"{path}: The TrainConfig option 'epochs' must be an int"):
        configure(TrainConfig(), path)
    path.write_text("- lr\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        configure(TrainConfig(), path)


def test_cli_rejects_a_bad_option_before_training(tiny_cohort, tmp_path, capsys):
    code = main(["train", str(tiny_cohort.manifest_path), "--features", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--set", "n_heads=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'d_model' must be an int divisible by n_heads (3)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
