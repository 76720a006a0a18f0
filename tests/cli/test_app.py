"""sever.cli.app: the group's -q/-v/--debug on every command, before or after its name."""

import logging
import re

import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_config
from sever.cli.app import cli

LEVEL = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ", re.M)


@pytest.fixture(autouse=True)
def no_console_left():
    """Each command configures logging for its run; leave no console handler (on a closed stream) behind."""
    yield
    for name in ("sever", ""):
        logging.getLogger(name).handlers.clear()


def levels(*args):
    """The exit code and the log levels of the lines ``sever ARGS`` printed on stderr."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, set(LEVEL.findall(result.stderr))


def test_every_command_takes_the_verbosity_flags_after_its_name():
    for name, command in cli.commands.items():
        spellings = {opt for param in command.params for opt in param.opts}
        assert {"-q", "--quiet", "-v", "--verbose", "--debug"} <= spellings, name


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_hides_a_commands_info_lines_and_verbose_shows_its_debug_lines(demo_dir, where):
    def check_data(flag):
        command = ["check-data", str(demo_dir)]
        return levels(*([flag, *command] if where == "before" else [*command, flag]))

    assert levels("check-data", str(demo_dir)) == (0, {"INFO"})
    assert check_data("-q") == (0, set())
    assert check_data("--quiet") == (0, set())
    assert check_data("-v") == (0, {"DEBUG", "INFO"})
    assert check_data("--verbose") == (0, {"DEBUG", "INFO"})


def test_quiet_demo_data_says_nothing_on_stderr_but_still_prints_its_result(tmp_path):
    args = ["demo-data", "-o", str(tmp_path / "demo"), "--seed", "1"]
    result = CliRunner().invoke(cli, [*args, "-q"], catch_exceptions=False)
    assert result.exit_code == 0 and result.stderr == ""
    assert str(tmp_path / "demo") in result.stdout
    assert levels(*args) == (0, {"INFO"}), "the same command without -q logs (reusing the folder)"


def test_verbose_wins_over_quiet(demo_dir):
    assert levels("-q", "check-data", str(demo_dir), "-v") == (0, {"DEBUG", "INFO"})


def _train_with(tmp_path, demo_dir, tile):
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(tiny_config(demo_dir, tmp_path / "saved", epochs=1)))
    return CliRunner().invoke(cli, ["train", "-c", str(path), "--set", f"trainer.valid_tile={tile}"])


def test_a_tile_size_from_set_is_read_as_hxw_and_a_bad_one_names_the_key(tmp_path, demo_dir):
    # YAML reads 0x64 as the hex number 100: the error said "got 100 (int)"
    result = _train_with(tmp_path, demo_dir, "0x64")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().endswith("trainer.valid_tile: 0x64: height and width must be positive"), result.stderr
    assert not (tmp_path / "saved").exists(), "refused before a run folder is made"
    result = _train_with(tmp_path, demo_dir, "64x48")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("trainer.valid_tile: 64x48: height and width must be multiples of the "
                                          "network stride 32"), result.stderr
