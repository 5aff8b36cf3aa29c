"""A model's recipe (the published PersAM's training options) fills what the user left at its default."""
import json

from persam_lib.cli import main
from persam_lib.train.loop import TrainConfig
from persam_lib.train.recipes import RECIPES, recipe_of, with_recipe


def test_the_published_recipe_fills_defaults_and_the_users_options_win():
    paper = with_recipe(TrainConfig.of(model="persam_paper", label_smoothing=0.2))
    assert (paper.attention_loss_weight, paper.subbag_size, paper.subbags_at_test) == (1.0, 100, 50)
    assert paper.label_smoothing == 0.2  # set by the user: kept
    assert with_recipe(TrainConfig.of(model="persam_paper")).label_smoothing == 0.05
    assert with_recipe(TrainConfig.of(model="persam")) == TrainConfig.of(model="persam")  # our models follow TrainConfig
    assert with_recipe(paper) == paper  # applying it twice changes nothing (a resumed run sees the same config)
    assert recipe_of("abmil") == {} and set(RECIPES["persam_paper"]) <= set(TrainConfig().to_dict())


def test_a_run_records_the_recipe_it_trained_with(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "run"
    args = ["--folds", "2", "--epochs", "1", "--set", "d_model=8", "--set", "n_heads=2", "--set", "val_fraction=0.25", "--set", "attention_loss_weight=0.5"]
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "persam_paper", "--out", str(out), *args]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["subbag_size"], recorded["subbags_at_test"], recorded["label_smoothing"]) == (100, 50, 0.05)
    assert recorded["attention_loss_weight"] == 0.5  # --set wins over the recipe
    # the same command resumes the finished run instead of refusing a changed configuration
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "persam_paper", "--out", str(out), *args]) == 0


def test_an_option_set_to_the_global_default_still_wins_over_the_recipe(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "run"
    args = ["--folds", "2", "--epochs", "1", "--set", "d_model=8", "--set", "n_heads=2", "--set", "val_fraction=0.25", "--set", "attention_loss_weight=0", "--set", "label_smoothing=0.1"]
    assert main(["train", str(tiny_cohort.manifest_path), "--features", str(tiny_features), "--model", "persam_paper", "--out", str(out), *args]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["attention_loss_weight"], recorded["label_smoothing"]) == (0.0, 0.1)  # given, though equal to TrainConfig's defaults
    assert recorded["subbag_size"] == 100  # not given: the recipe's
    assert with_recipe(TrainConfig.of(model="persam_paper", attention_loss_weight=0.0), given={"attention_loss_weight"}).attention_loss_weight == 0.0
    assert with_recipe(TrainConfig.of(model="persam_paper", attention_loss_weight=0.0)).attention_loss_weight == 1.0  # without `given`: only changed values count as given
