"""Checkpoint files: atomic save, safe load, run folders."""

import os
import pickle
from datetime import datetime

import pytest
import torch

from sever.exceptions import CheckpointError, ConfigError
from sever.utils.checkpoint import atomic_torch_save, load_checkpoint
from sever.utils.run import RunPaths, resolve_resume


def state(epoch, step=0):
    return {"state_dict": {"w": torch.full((2,), float(epoch))}, "config": {"name": "t"}, "epoch": epoch, "step": step}


def test_atomic_save_round_trip_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.pth"
    atomic_torch_save(state(3), path)
    atomic_torch_save(state(4), path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and torch.equal(loaded["state_dict"]["w"], torch.full((2,), 4.0))
    assert os.listdir(tmp_path) == ["a.pth"]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({**state(1), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    good = tmp_path / "good.pth"
    torch.save(state(1), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a sever checkpoint"):
        load_checkpoint(foreign)
    plain_pickle = tmp_path / "pickle.pth"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain_pickle)


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
