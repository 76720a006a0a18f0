"""The study file, study.yml: validated on every read, a bad hand edit refused before anything is written."""

import re

import pytest
import yaml
from click.testing import CliRunner

from sever.cli.app import cli
from sever.exceptions import CheckpointError
from sever.study.folder import StudyPaths, unfinished
from sever.utils.config import dump_config


def study_with(tmp_path, edit, rounds=0):
    """A 2-fold study folder whose study.yml went through ``edit(data)`` (a hand edit)."""
    from conftest import tiny_config

    paths = StudyPaths(tmp_path / "study")
    paths.root.mkdir()
    paths.initialise(2, rounds)
    data = yaml.safe_load(paths.file.read_text())
    edit(data)
    paths.file.write_text(yaml.safe_dump(data, sort_keys=False))
    dump_config(tiny_config(tmp_path / "no-data", tmp_path / "saved"), paths.config)
    return paths


def drop_run(data):
    del data["runs"][1]["run"]


def fold_zero(data):
    data["runs"][0]["fold"] = "zero"


def unknown_status(data):
    data["runs"][1]["status"] = "finished"


def absolute_run(data):
    data["runs"][0]["run"] = "/elsewhere/fold0"


def round_without_runs(data):
    del data["rounds"][0]["runs"]


def one_fold_missing(data):
    del data["rounds"][0]["runs"][1]


BAD_EDITS = [
    (drop_run, 0, "round 0, fold 1: 'run' is missing"),
    (fold_zero, 0, r"round 0, fold 0: fold: the integer 0 .*, got 'zero'"),
    (unknown_status, 0, "round 0, fold 1: status: one of pending, running, done, failed, got 'finished'"),
    (absolute_run, 0, "round 0, fold 0: run: the fold's run folder relative to the study, got '/elsewhere/fold0'"),
    (round_without_runs, 1, "round 1: runs: a list of fold entries, got None"),
    (one_fold_missing, 1, "round 1: runs: 1 fold entries for folds: 2"),
]


@pytest.mark.parametrize("edit, rounds, message", BAD_EDITS)
def test_a_bad_entry_is_refused_naming_the_file_round_fold_and_key(tmp_path, edit, rounds, message):
    paths = study_with(tmp_path, edit, rounds)
    with pytest.raises(CheckpointError, match=message) as error:
        paths.entries()
    assert str(error.value).startswith(f"{paths.file}: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("edit, rounds, message", BAD_EDITS)
def test_train_resume_refuses_a_bad_study_file_and_changes_nothing(tmp_path, edit, rounds, message):
    paths = study_with(tmp_path, edit, rounds)
    before = {path: path.read_bytes() for path in paths.root.rglob("*") if path.is_file()}
    result = CliRunner().invoke(cli, ["train", "-r", str(paths.root)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    (line,) = [line for line in result.output.splitlines() if str(paths.file) in line]  # one line names it all
    assert re.search(message, line), result.output
    assert {path: path.read_bytes() for path in paths.root.rglob("*") if path.is_file()} == before


def test_a_sound_file_reads_and_updates(tmp_path):
    paths = study_with(tmp_path, lambda data: None, rounds=1)
    paths.at_round(1).set_status(1, "done")
    assert unfinished(paths.at_round(1)) == [0]
    assert [entry.run for entry in paths.at_round(1).entries()] == [paths.root / "round1" / "fold0",
                                                                   paths.root / "round1" / "fold1"]
