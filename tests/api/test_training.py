"""sever.train's config sources and overrides (the training itself: tests/test_public_api.py)."""

import pytest

from sever.api.training import merge, read_config, train
from sever.exceptions import ConfigError
from sever.utils.config import builtin_experiments


def test_merge_replaces_values_and_merges_blocks_at_any_depth():
    config = {"trainer": {"epochs": 4, "monitor": "max val_dice_mean"},
              "data_loader": {"type": "SteelDataLoader", "args": {"data_dir": "a", "batch_size": 4}}, "seed": 1}
    merged = merge(config, {"trainer": {"epochs": 1}, "data_loader": {"args": {"data_dir": "b"}}, "seed": 2,
                            "metrics": ["Dice"]})
    assert merged == {"trainer": {"epochs": 1, "monitor": "max val_dice_mean"},
                      "data_loader": {"type": "SteelDataLoader", "args": {"data_dir": "b", "batch_size": 4}},
                      "seed": 2, "metrics": ["Dice"]}
    assert config["trainer"]["epochs"] == 4  # the original is untouched
    assert merge(config, {"trainer": None})["trainer"] is None


def test_a_config_is_a_file_a_builtin_name_or_a_dict(tmp_path):
    demo, source = read_config("demo")
    assert demo["name"] == "demo" and source == str(builtin_experiments()["demo"])
    mine = tmp_path / "mine.yml"
    mine.write_text("name: mine\n")
    assert read_config(mine) == ({"name": "mine"}, str(mine))
    given = {"name": "x", "trainer": {"epochs": 1}}
    copied, source = read_config(given)
    assert copied == given and copied["trainer"] is not given["trainer"] and source is None
    with pytest.raises(ConfigError, match="not a built-in experiment"):
        read_config("no-such-experiment")


def test_a_bad_override_fails_before_training_naming_the_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"demo\.yml: .*trainer\.epoch"):
        train("demo", trainer={"epoch": 1}, save_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="pseudo-label rounds train a study"):
        train("demo", pseudo={"images": str(tmp_path), "rounds": 1}, save_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing trained, no run folder
