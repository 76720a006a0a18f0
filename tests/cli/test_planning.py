"""``sever plan`` / ``sever auto`` on the command line: an output that cannot be written is refused before any work."""

import os

import pytest
from click.testing import CliRunner
from plan_datasets import squares_dataset

import sever.study.auto as auto_module
from sever.cli.app import cli


@pytest.fixture
def no_fingerprint(monkeypatch):
    """Fail loudly if the plan gets as far as reading the data."""
    def refuse(*args, **kwargs):
        raise AssertionError("the fingerprint ran before the output was checked")

    monkeypatch.setattr(auto_module, "fingerprint", refuse)


def plan(data, output):
    return CliRunner().invoke(cli, ["plan", str(data), "--device", "cpu", "--time", "10m", "-o", str(output)])


def test_an_output_under_a_file_is_refused_before_the_fingerprint(tmp_path, no_fingerprint):
    data = squares_dataset(tmp_path / "sq")
    (tmp_path / "a_file.txt").write_text("mine\n")
    result = plan(data, tmp_path / "a_file.txt" / "mine.yml")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: -o {tmp_path / 'a_file.txt' / 'mine.yml'}: cannot write it: {tmp_path / 'a_file.txt'} is a file, "
        "not a folder")
    assert (tmp_path / "a_file.txt").read_text() == "mine\n" and sorted(os.listdir(tmp_path)) == ["a_file.txt", "sq"]


def test_an_output_that_is_a_folder_or_unwritable_is_refused(tmp_path, no_fingerprint):
    data = squares_dataset(tmp_path / "sq")
    (tmp_path / "taken.yml").mkdir()
    result = plan(data, tmp_path / "taken.yml")
    assert result.exit_code == 2 and "is a directory" in result.output  # click's own check of -o
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
        result = plan(data, locked / "deeper" / "mine.yml")
        assert result.exit_code == 1 and f"cannot write it: {locked} is not writable" in result.output
        assert not (locked / "deeper").exists()
    finally:
        locked.chmod(0o700)


def test_auto_refuses_an_output_folder_under_a_file(tmp_path, no_fingerprint):
    data = squares_dataset(tmp_path / "sq")
    (tmp_path / "a_file.txt").write_text("mine\n")
    result = CliRunner().invoke(cli, ["auto", str(data), "--time", "10m", "-o", str(tmp_path / "a_file.txt" / "out")])
    assert result.exit_code == 1 and "is a file, not a folder" in result.output and "Traceback" not in result.output
