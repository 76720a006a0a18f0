"""Checkpoint files: atomic save, safe load (run folders: tests/utils/test_run.py)."""

import logging
import os
import pickle

import pytest
import torch

from sever.exceptions import CheckpointError, first_line
from sever.utils.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    remove_stale_temporaries,
)


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


def test_a_failed_first_save_says_nothing_about_a_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"

    def disk_full(obj, handle, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=f"^cannot write checkpoint {path}: No space left on device$"):
        atomic_torch_save(state(1), path)
    assert os.listdir(tmp_path) == []


def test_map_location_places_the_loaded_tensors(tmp_path):
    path = tmp_path / "a.pth"
    atomic_torch_save(state(2), path)
    assert load_checkpoint(path)["state_dict"]["w"].device.type == "cpu"
    # "meta" stands for another device here: the tensors land where map_location says, not where they were saved.
    assert load_checkpoint(path, map_location="meta")["state_dict"]["w"].device.type == "meta"
    assert load_checkpoint(path, map_location={"cpu": "meta"})["state_dict"]["w"].device.type == "meta"


def mapped(path):
    """Whether this process has ``path`` memory-mapped (Linux: /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        return str(path) in maps.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")
def test_mmap_maps_the_file_only_when_asked(tmp_path):
    path = tmp_path / "a.pth"
    atomic_torch_save(state(5), path)
    read = load_checkpoint(path)
    assert not mapped(path) and torch.equal(read["state_dict"]["w"], torch.full((2,), 5.0))
    mapped_state = load_checkpoint(path, mmap=True)
    assert mapped(path) and torch.equal(mapped_state["state_dict"]["w"], torch.full((2,), 5.0))


def test_code_pickles_stay_refused_when_the_environment_turns_off_torchs_weights_only_default(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    torch.save({**state(1), "extra": Payload()}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused to load") as refused:
        load_checkpoint(path)
    # the reason torch gave ends the message
    assert str(refused.value).endswith(f"({first_line(refused.value.__cause__)})")


def test_a_damaged_file_is_reported_with_the_error_torch_raised(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"^{empty}: corrupt or truncated checkpoint: EOFError: ") as damaged:
        load_checkpoint(empty)
    assert str(damaged.value).endswith(f": {first_line(damaged.value.__cause__)}")


@pytest.mark.parametrize("bad", [
    {"config": ["not", "a", "mapping"]},
    {"epoch": "3"},
    {"epoch": 3.0},
    {"state_dict": None, "config": None, "epoch": None, "drop": "state_dict"},
])
def test_a_checkpoint_with_a_wrong_config_or_epoch_type_is_not_a_sever_checkpoint(tmp_path, bad):
    content = {**state(3), **bad}
    content.pop(content.pop("drop", None), None)
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (f"{path}: not a sever checkpoint (expected a dict with keys state_dict, config, "
                                  "epoch, config a mapping and epoch an integer)")


def test_stale_temporaries_are_removed_and_logged_and_nothing_else(tmp_path, caplog):
    stale = [tmp_path / ".last.pth.4242.tmp", tmp_path / ".epoch_3.pth.17.tmp"]
    kept = ["last.pth", "notes.tmp", ".hidden"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    for name in kept:
        (tmp_path / name).write_bytes(b"kept")
    with caplog.at_level("INFO", logger="sever.utils.checkpoint"):
        remove_stale_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert sorted(caplog.messages) == sorted(f"removing {path}, left by an interrupted save" for path in stale)


def test_a_temporary_that_vanishes_while_being_cleared_is_not_an_error(tmp_path):
    """Another save finishing (its rename) between the listing and the delete."""
    temporary = tmp_path / ".last.pth.99.tmp"
    temporary.write_bytes(b"partial")

    class RenameMeanwhile(logging.Handler):
        def emit(self, record):
            temporary.replace(tmp_path / "last.pth")

    logger = logging.getLogger("sever.utils.checkpoint")
    handler = RenameMeanwhile(level=logging.INFO)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        remove_stale_temporaries(tmp_path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert os.listdir(tmp_path) == ["last.pth"]


# ---------------------------------------------------------------- checkpoint writes killed or out of disk


class Killed(Exception):
    """Stands for the process being killed in the middle of a write."""


def test_a_save_killed_half_way_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 1}, path)
    real_save = torch.save

    def save_half_then_die(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(50)
        raise Killed

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(Killed):
        atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_full_disk_is_a_checkpoint_error_that_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 1}, path)

    def disk_full(obj, handle, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=f"^cannot write checkpoint {path}: No space left on device; "
                                              f"{path} is unchanged$"):
        atomic_torch_save({"state_dict": {}, "config": {}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
