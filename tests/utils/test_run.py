"""Run folders: their layout and names, a save folder that cannot be written, free space, and which checkpoint
a resume picks."""

from datetime import datetime

import pytest
import torch

from sever.exceptions import CheckpointError, ConfigError
from sever.utils.run import RunPaths, resolve_resume


def state(epoch, step=0):
    return {"state_dict": {"w": torch.full((2,), float(epoch))}, "config": {"name": "t"}, "epoch": epoch, "step": step}


def test_run_folder_layout_and_name_collisions(tmp_path):
    now = datetime(2026, 10, 26, 14, 0, 0)
    first = RunPaths.create(tmp_path, "sever-unet-b5", now=now)
    second = RunPaths.create(tmp_path, "sever-unet-b5", now=now)
    assert first.root == tmp_path / "sever-unet-b5" / "1026_140000"
    assert second.root == tmp_path / "sever-unet-b5" / "1026_140000_1"
    assert first.checkpoints.is_dir() and first.tensorboard.is_dir()
    with pytest.raises(ConfigError, match="name"):
        RunPaths.create(tmp_path, "../escape")


def test_unwritable_save_dir_is_reported_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(ConfigError, match="save_dir: cannot write"):
        RunPaths.create(blocker, "run")


def test_free_space_check(tmp_path):
    run = RunPaths.create(tmp_path, "run")
    run.check_free_space(1)
    with pytest.raises(ConfigError, match="MiB free"):
        run.check_free_space(1 << 62)


def test_resume_picks_newest_valid_checkpoint(tmp_path):
    run = RunPaths.create(tmp_path, "run")
    torch.save(state(2), run.epoch_checkpoint(2))
    torch.save(state(4), run.epoch_checkpoint(4))
    torch.save(state(4, step=3), run.last)
    assert resolve_resume(run.root) == run.last
    run.last.write_bytes(b"corrupt")
    assert resolve_resume(run.root) == run.epoch_checkpoint(4)
    assert resolve_resume(run.epoch_checkpoint(2)) == run.epoch_checkpoint(2)
    assert run.saved_epochs() == [2, 4]
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_resume(tmp_path / "missing")
