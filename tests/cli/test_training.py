"""Bad input through ``sever train`` as a user types it: exit 1, a message naming the key, file or
CSV row, no traceback, and nothing trained or saved. Also checkpoints that must never be
written over good ones. (Interrupting real training processes: tests/trainer/test_interrupt.py.)
"""

import copy
import os
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import tiny_config

from sever import experiment
from sever.cli.app import cli
from sever.exceptions import CheckpointError, TrainingError
from sever.experiment import check_compatible, prepare_config
from sever.trainer.trainer import Trainer
from sever.utils.checkpoint import atomic_torch_save, load_checkpoint, remove_stale_temporaries
from sever.utils.run import RunPaths


def assert_user_error(result, *fragments):
    """Exit 1 with every fragment in the output and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"unexpected {result.exception!r}"
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"


@pytest.fixture
def data(demo_dir, tmp_path):
    """A copy of the demo data the test may damage."""
    return shutil.copytree(demo_dir, tmp_path / "data")


@pytest.fixture
def train(make_config, data, tmp_path):
    """``train(change)``: write the tiny config (on the copied data) after ``change(config)``, run ``sever train -c``."""

    def run(change=None, text=None, *options):
        config = make_config()
        config["data_loader"]["args"]["data_dir"] = str(data)
        if change is not None:
            change(config)
        path = tmp_path / "experiment.yml"
        path.write_text(text if text is not None else yaml.safe_dump(config))
        result = CliRunner().invoke(cli, ["train", "-c", str(path), *options])
        saved = tmp_path / "saved"
        assert not saved.exists() or not list(saved.rglob("*.pth")), "nothing may be saved"
        return result

    return run


def csv_lines(data):
    return (data / "train.csv").read_text().splitlines()


def write_csv(data, lines):
    (data / "train.csv").write_text("\n".join(lines) + "\n")


def set_key(dotted, value):
    def change(config):
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return change


def delete_key(dotted):
    def change(config):
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[last]
    return change


# ---------------------------------------------------------------- config


CONFIG_CASES = {
    "unknown top-level key": (set_key("trainr", {"epochs": 1}), ["trainr: unknown key. Did you mean 'trainer'?"]),
    "unknown key in an args block": (
        set_key("augmentation.args.heigth", 64),
        ["augmentation.args.heigth: unknown argument for HeavyCropTransforms. Did you mean 'height'?"],
    ),
    "seed outside NumPy's range": (set_key("seed", -1), ["seed: must be in 0..2**32-1"]),
    "wrong type": (set_key("trainer.epochs", "three"), ["trainer.epochs: expected an integer, got 'three'"]),
    "missing required key": (delete_key("loss"), ["loss: missing required key"]),
    "negative learning rate": (set_key("optimizer.encoder.lr", -0.001), ["optimizer.encoder.lr: must be >= 0"]),
    "crop of zero height": (
        set_key("augmentation.args.height", 0),
        ["augmentation: cannot build augmentation 'HeavyCropTransforms': crop height must be a positive multiple "
         "of 32", "got 0"],
    ),
    "unknown pad mode": (
        set_key("augmentation.args.pad_mode", "wrap"),
        ["augmentation: cannot build augmentation 'HeavyCropTransforms': pad_mode must be one of constant, reflect, "
         "got 'wrap'"],
    ),
    "batch larger than the split": (
        set_key("data_loader.args.batch_size", 64),
        ["the training split has 18 images, fewer than data_loader.args.batch_size (64)"],
    ),
    "classes below the CSV's class ids": (set_key("classes", 3), ["train.csv row", "ClassId '4' is not an integer in 1..3"]),
    "unknown data check mode": (
        set_key("data_loader.args.check", "fast"), ["data_loader.args.check: 'fast' is not one of quick, full, off"],
    ),
    "the removed mask cache": (
        set_key("data_loader.args.mask_cache", "off"),
        ["data_loader.args.mask_cache: the decoded-mask cache was removed", "delete mask_cache from the config"],
    ),
    "empty training split after the validation split": (
        set_key("data_loader.args.validation_split", 0.99),
        ["the training split has 0 images", "validation_split"],
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_values(train, case):
    change, fragments = CONFIG_CASES[case]
    assert_user_error(train(change), *fragments)


def test_yaml_syntax_error_names_the_line(train, tmp_path):
    text = "name: tiny\ntrainer:\n  epochs: [1, 2\n  save_period: 1\n"
    assert_user_error(train(text=text), f"{tmp_path / 'experiment.yml'}:4: YAML syntax error")


def test_unwritable_save_dir_is_found_at_start_up(train, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_user_error(train(set_key("save_dir", str(blocker / "runs"))), "save_dir: cannot write to")


# ---------------------------------------------------------------- data


def test_data_directory_missing(train, tmp_path):
    missing = tmp_path / "nowhere"
    assert_user_error(train(set_key("data_loader.args.data_dir", str(missing))),
                      f"image folder not found: {missing / 'train_images'}")


def test_data_directory_without_images(train, data):
    for image in (data / "train_images").iterdir():
        image.rename(image.with_suffix(".txt"))
    assert_user_error(train(), "no images (.jpg", str(data / "train_images"))


def test_csv_columns_match_no_format(train, data):
    (data / "train.csv").write_text("Image,Label,Mask\na.jpg,1,1 2\n")
    assert_user_error(train(), f"{data / 'train.csv'}: found columns Image,Label,Mask, which match no annotation format")


def test_image_id_missing_on_disk(train, data):
    name = csv_lines(data)[1].split(",")[0]
    (data / "train_images" / name).unlink()
    assert_user_error(train(), "ImageId(s) have no image in", name)


def test_image_id_listed_twice(train, data):
    lines = csv_lines(data)
    write_csv(data, lines + [lines[1]])
    name, class_id = lines[1].split(",")[:2]
    assert_user_error(train(), f"ImageId '{name}' class {class_id} is listed twice, at row 1 and row {len(lines)}")


@pytest.mark.parametrize("image_id, problem", [
    ("../secret.jpg", "contains a path separator"),
    ("/etc/passwd", "is an absolute path"),
])
def test_image_id_leaving_the_data_directory(train, data, image_id, problem):
    lines = csv_lines(data)
    write_csv(data, lines + [f"{image_id},1,1 5"])
    assert_user_error(train(), f"row {len(lines)} (line {len(lines) + 1}): ImageId '{image_id}' {problem}")


@pytest.mark.parametrize("rle, problem", [
    ("1 x", "RLE value 2 ('x') is not an integer"),
    ("1 2 3", "odd number of values"),
    ("0 5", "starts at 0; starts are 1-indexed"),
    ("5 0", "has length 0"),
    ("10 5 3 2", "runs are not sorted"),
    ("1 5 3 2", "runs overlap"),
])
def test_malformed_rle_names_the_row(train, data, rle, problem):
    lines = csv_lines(data)
    name, class_id, _ = lines[3].split(",")
    lines[3] = f"{name},{class_id},{rle}"
    write_csv(data, lines)
    assert_user_error(train(), "train.csv row 3 (line 4): EncodedPixels:", problem)


def test_unreadable_image(train, data):
    victim = sorted((data / "train_images").iterdir())[5]
    victim.write_bytes(b"GIF89a: not what the name says")
    assert_user_error(train(), "1 data problem(s) found before training", f"{victim}: not a JPEG")


def test_truncated_image(train, data):
    victim = sorted((data / "train_images").iterdir())[9]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert_user_error(train(), f"{victim}: truncated or corrupt JPEG (no end-of-image marker)")


def test_corrupt_image_data_found_by_the_full_check(train, data):
    victim = sorted((data / "train_images").iterdir())[2]
    blob = bytearray(victim.read_bytes())
    table = blob.find(b"\xff\xc4") + 5  # the code counts of the first Huffman table
    blob[table:table + 16] = b"\xff" * 16  # impossible counts; frame size and end marker intact
    victim.write_bytes(bytes(blob))
    assert_user_error(train(set_key("data_loader.args.check", "full")), f"{victim}: not a readable image")


def test_image_smaller_than_its_mask(train, data):
    lines = csv_lines(data)
    name, class_id, _ = lines[1].split(",")
    lines[1] = f"{name},{class_id},16000 10"
    write_csv(data, lines)
    small = np.full((32, 128), 100, np.uint8)
    (data / "train_images" / name).write_bytes(cv2.imencode(".jpg", small)[1].tobytes())
    assert_user_error(train(), f"train.csv row 1 (line 2) (ImageId '{name}', class {class_id}): the mask runs to "
                               f"pixel 16009, past the 4096 pixels of {name} (32x128): mask and image sizes disagree")


# ---------------------------------------------------------------- checkpoints


@pytest.fixture
def checkpoint(make_config, tmp_path):
    """A run folder with a sever checkpoint of the tiny config (weights not needed to test refusals)."""
    run = RunPaths.create(tmp_path / "saved", "tiny")
    config = prepare_config(make_config())
    torch.save({"state_dict": {}, "config": config, "epoch": 1, "step": 0}, run.last)
    return run


def resume(path, *overrides):
    options = [item for override in overrides for item in ("--set", override)]
    return CliRunner().invoke(cli, ["train", "-r", str(path), *options])


def test_resume_from_a_missing_checkpoint(tmp_path):
    assert_user_error(resume(tmp_path / "gone.pth"), f"{tmp_path / 'gone.pth'}: neither a checkpoint file nor a run folder")


def test_resume_from_a_truncated_checkpoint(checkpoint):
    blob = checkpoint.last.read_bytes()
    checkpoint.last.write_bytes(blob[: len(blob) // 2])
    assert_user_error(resume(checkpoint.last), f"{checkpoint.last}: corrupt or truncated checkpoint")
    assert_user_error(resume(checkpoint.root), f"{checkpoint.root}: no loadable checkpoint")


def test_resume_from_a_foreign_checkpoint(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"model": torch.zeros(2)}, path)
    assert_user_error(resume(path), f"{path}: not a sever checkpoint")


def test_resume_refuses_a_checkpoint_that_needs_pickles(checkpoint):
    checkpoint.last.write_bytes(pickle.dumps({"state_dict": {}, "config": {}, "epoch": 1, "hook": os.getcwd}))
    assert_user_error(resume(checkpoint.last), "refused to load", "could run code")


@pytest.mark.parametrize("override, message", [
    ("arch.args.encoder_name=resnet34", "arch.args.encoder_name is 'resnet18' in the checkpoint but 'resnet34' in the config"),
    ("arch.type=Unet", "arch.type is 'FPN' in the checkpoint but 'Unet' in the config"),
    ("classes=3", "classes is 4 in the checkpoint but 3 in the config"),
])
def test_resume_with_another_architecture_or_class_count(checkpoint, override, message):
    assert_user_error(resume(checkpoint.root, override), f"{checkpoint.last} does not fit the config in use", message)


def test_compatibility_ignores_weightless_args_and_spelled_out_defaults(make_config):
    saved = prepare_config(make_config())
    same = copy.deepcopy(saved)
    same["arch"]["args"].update(encoder_weights="imagenet", dropout=0.3, in_channels="g")  # "g" is the default
    check_compatible(saved, same)
    other = copy.deepcopy(saved)
    other["arch"]["args"]["in_channels"] = "rgb"
    with pytest.raises(CheckpointError, match="arch.args.in_channels is 'g' in the checkpoint but 'rgb'"):
        check_compatible(saved, other)


# ---------------------------------------------------------------- writing checkpoints


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 1}, path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {path}: No space left on device; .* unchanged"):
        atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["last.pth"]


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    (tmp_path / ".last.pth.4242.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "last.pth").write_bytes(b"kept")
    remove_stale_temporaries(tmp_path)
    assert os.listdir(tmp_path) == ["last.pth"]


@pytest.fixture(scope="module")
def trained(demo_dir, module_tmp):
    """A run trained for one step; the tests using it must leave its checkpoints as they are."""
    config = tiny_config(demo_dir, module_tmp("saved"), epochs=1, max_steps_per_epoch=1)
    config["data_loader"]["args"].update(batch_size=2, validation_split=2)
    return experiment.train(config)


@pytest.mark.slow
def test_nan_weights_are_never_saved_over_good_ones(trained, monkeypatch):
    run = trained
    good = load_checkpoint(run.last)["state_dict"]
    original = Trainer._optimizer_step

    def poisoning_step(self):
        original(self)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_optimizer_step", poisoning_step)
    with pytest.raises(TrainingError, match="NaN or infinite values .* without saving them"):
        experiment.resume(run.root, ["trainer.epochs=2", "trainer.nan_policy=skip"])
    after = load_checkpoint(run.last)
    assert after["epoch"] == 1 and all(torch.equal(good[k], after["state_dict"][k]) for k in good)


@pytest.mark.slow
def test_optimizer_state_that_does_not_fit_is_a_checkpoint_error(trained):
    before = trained.last.read_bytes()
    with pytest.raises(CheckpointError, match="optimizer or lr_scheduler state does not fit"):
        experiment.resume(trained.root, ["trainer.epochs=2", "optimizer={type: SGD, args: {lr: 0.1}}"])
    assert trained.last.read_bytes() == before
