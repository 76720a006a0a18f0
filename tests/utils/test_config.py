"""Config loading, overrides and validation."""

import pytest

from sever.exceptions import ConfigError
from sever.utils.config import apply_overrides, load_config, parse_yaml, validate_config
from sever.utils.registry import Registry

MINIMAL = {
    "name": "test",
    "classes": 4,
    "arch": {"type": "Unet", "args": {}},
    "data_loader": {"type": "SteelDataLoader", "args": {"data_dir": "x"}},
    "augmentation": "LightTransforms",
    "loss": "BCEDiceLoss",
    "optimizer": {"type": "Adam", "args": {"lr": 0.001}},
    "trainer": {"epochs": 2},
}


def test_scientific_notation_without_dot_is_a_float():
    assert parse_yaml("lr: 7e-5\nwd: -3E+4\nn: 5\ns: e5") == {"lr": 7e-5, "wd": -3e4, "n": 5, "s": "e5"}


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("name: x\ntrainer:\n  epochs: [1, 2\n  other: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yml:\d+: YAML syntax error"):
        load_config(path)


def test_yaml_refuses_python_objects(tmp_path):
    path = tmp_path / "evil.yml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml")
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yml")


def test_overrides_are_typed_and_create_paths():
    config = apply_overrides(
        MINIMAL,
        ["trainer.epochs=7", "data_loader.args.data_dir=/data/neu", "amp=null", "metrics=[Dice, IoU]",
         "lr_scheduler.type=StepLR", "optimizer.args.lr=3e-4"],
    )
    assert config["trainer"]["epochs"] == 7
    assert config["data_loader"]["args"]["data_dir"] == "/data/neu"
    assert config["amp"] is None
    assert config["metrics"] == ["Dice", "IoU"]
    assert config["lr_scheduler"] == {"type": "StepLR"}
    assert config["optimizer"]["args"]["lr"] == 3e-4
    assert MINIMAL["trainer"]["epochs"] == 2, "the input config must not change"


def test_override_list_index_and_errors():
    config = apply_overrides({"metrics": [{"type": "Dice", "args": {"threshold": 0.5}}]},
                             ["metrics.0.args.threshold=0.4"])
    assert config["metrics"][0]["args"]["threshold"] == 0.4
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(MINIMAL, ["trainer.epochs"])
    with pytest.raises(ConfigError, match="index"):
        apply_overrides({"metrics": ["Dice"]}, ["metrics.3=IoU"])
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(MINIMAL, ["name.sub=1"])


def test_validation_fills_defaults():
    config = validate_config(MINIMAL)
    assert config["seed"] == 1234 and config["device"] == "auto" and config["amp"] == "off"
    assert config["trainer"]["monitor"] == "max val_dice_mean"
    assert config["trainer"]["accumulate_steps"] == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainr.epochs=3", r"trainr: unknown key\. Did you mean 'trainer'\?"),
        ("trainer.epoch=3", r"trainer\.epoch: unknown key\. Did you mean 'epochs'\?"),
        ("trainer.epochs=-1", r"trainer\.epochs: must be > 0"),
        ("trainer.epochs=three", r"trainer\.epochs: expected an integer"),
        ("trainer.epochs=true", r"trainer\.epochs: expected an integer"),
        ("classes=0", r"classes: must be > 0"),
        ("amp=fp32", r"amp: expected off, bf16 or fp16"),
        ("task=tracking", r"task: 'tracking' is not one of"),
        ("trainer.monitor=maximise dice", r"trainer\.monitor"),
        ("trainer.nan_policy=ignore", r"trainer\.nan_policy"),
        ("trainer.ema_decay=1.5", r"trainer\.ema_decay: must be in \(0, 1\)"),
        ("class_names=[a, b]", r"class_names: 2 names given but classes is 4"),
        ("metrics=[3]", r"metrics\.0"),
    ],
)
def test_validation_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(apply_overrides(MINIMAL, [override]))


def test_missing_required_key():
    config = dict(MINIMAL)
    del config["loss"]
    with pytest.raises(ConfigError, match="loss: missing required key"):
        validate_config(config)


def test_amp_off_read_by_yaml_as_false():
    assert validate_config({**MINIMAL, "amp": False})["amp"] == "off"
    assert validate_config({**MINIMAL, "amp": "bf16"})["amp"] == "bf16"


class Widget:
    def __init__(self, size, colour="red", *, owner=None):
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size, self.colour, self.owner = size, colour, owner


def make_registry():
    registry = Registry("widget")
    registry.register(Widget)
    return registry


def test_registry_builds_by_name_with_supplied_args():
    widget = make_registry().build({"type": "Widget", "args": {"size": 3}}, "widget", owner="me")
    assert (widget.size, widget.colour, widget.owner) == (3, "red", "me")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "Widgit", "args": {"size": 1}}, r"widget\.type: unknown widget 'Widgit'\. Did you mean 'Widget'\? Valid: Widget"),
        ({"type": "Widget", "args": {"size": 1, "color": "b"}}, r"widget\.args\.color: unknown argument.*Did you mean 'colour'"),
        ({"type": "Widget", "args": {}}, r"widget\.args: missing required argument\(s\) size"),
        ({"type": "Widget", "args": {"size": 1, "owner": "x"}}, r"widget\.args\.owner: set by sever itself"),
        ({"type": "Widget", "arg": {"size": 1}}, r"widget\.arg: unknown key\. Did you mean 'args'"),
        ({"args": {}}, r"widget\.type: missing"),
        ({"type": "Widget", "args": {"size": -1}}, r"widget: cannot build widget 'Widget': size must be >= 0"),
        (42, r"widget: expected a name or a mapping"),
    ],
)
def test_registry_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_registry().build(spec, "widget", owner="me")


def test_a_size_from_set_stays_hxw_text_where_yaml_would_read_a_hex_number():
    from sever.utils.config import apply_overrides

    config = apply_overrides({"trainer": {}}, ["trainer.valid_tile=0x64", "trainer.other=64X128",
                                               "trainer.epochs=3", "trainer.hex=0x1f"])
    assert config["trainer"] == {"valid_tile": "0x64", "other": "64X128", "epochs": 3, "hex": 31}
