"""sever.cli.app: the command line as a user drives it; the group's -q/-v/--debug on every command, before or after its name."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, tiny_config

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

def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "demo-data"):
        assert command in result.output


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sever", "--version"], capture_output=True, text=True, check=True)
    assert "sever" in out.stdout


def test_train_needs_config_or_resume():
    result = invoke("train")
    assert result.exit_code == 2 and "give either -c CONFIG" in result.output


def test_config_errors_exit_1_with_the_key_and_no_traceback(make_config, tmp_path):
    path = tmp_path / "bad.yml"
    config = make_config()
    config["trainer"]["epohcs"] = config["trainer"].pop("epochs")
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["train", "-c", str(path)])
    assert result.exit_code == 1
    assert "trainer.epohcs: unknown key. Did you mean 'epochs'?" in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "missing.yml"
    result = CliRunner().invoke(cli, ["--debug", "train", "-c", str(path)])
    assert result.exit_code != 0 and result.exception is not None


@pytest.mark.slow
def test_train_with_overrides_then_resume(make_config, tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(make_config()))
    result = invoke("train", "-c", str(path), "--set", "trainer.epochs=1")
    assert result.exit_code == 0, result.output
    run_dir = result.output.split("run saved in ")[-1].splitlines()[0]
    assert f"next: sever predict -m {run_dir} -i IMAGE_DIR -o submission.csv" in result.output
    # the run's self-tuning judged each class; the verdicts come just above the predict command
    from sever.inference.learning import learning_lines, run_learning

    verdicts = learning_lines(run_learning(run_dir), f"validation split of {run_dir}")
    assert verdicts and result.output.strip().splitlines()[-1 - len(verdicts):-1] == verdicts
    config_file = Path(run_dir) / "config.yaml"
    written = yaml.safe_load(config_file.read_text())
    assert written["trainer"]["epochs"] == 1
    # the blocks' own defaults too, though tiny.yml sets none of these
    assert written["data_loader"]["args"]["check"] == "quick" and written["loss"]["args"]["bce_weight"] == 0.6
    assert written["metrics"] == [{"type": "Dice", "args": {"threshold": 0.5, "min_pixels": None}}]
    assert written["lr_scheduler"]["args"]["warmup_epochs"] == 0 and "config_key" not in written["arch"]["args"]
    resumed = invoke("train", "-r", run_dir, "--set", "trainer.epochs=2")
    assert resumed.exit_code == 0 and run_dir in resumed.output
    assert yaml.safe_load(config_file.read_text())["trainer"]["epochs"] == 2  # what the run now trains to


def test_debug_may_follow_the_command_name(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--debug", "-c", str(tmp_path / "missing.yml")])
    assert result.exit_code != 0 and "config file not found" in str(result.exception)
    quiet = CliRunner().invoke(cli, ["check-data", str(tmp_path / "missing")])
    assert quiet.exit_code == 1 and isinstance(quiet.exception, SystemExit)
    loud = CliRunner().invoke(cli, ["check-data", str(tmp_path / "missing"), "--debug"])
    assert loud.exception is not None and not isinstance(loud.exception, SystemExit)


def test_a_case_only_typo_gets_a_suggestion(make_config, tmp_path):
    config = make_config()
    config["arch"]["type"] = "Fpn"
    path = tmp_path / "typo.yml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("train", "-c", str(path))
    assert result.exit_code == 1 and "arch.type: unknown architecture 'Fpn'. Did you mean 'FPN'?" in result.output


def test_demo_data_command(tmp_path):
    result = invoke("demo-data", "-o", str(tmp_path / "demo"))
    assert result.exit_code == 0
    assert (tmp_path / "demo" / "train.csv").is_file()
    assert len(list((tmp_path / "demo" / "train_images").glob("*.jpg"))) == 256


def sever(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sever", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_debug_shows_the_traceback_of_a_user_error_and_its_absence_hides_it(tmp_path):
    missing = tmp_path / "missing.yml"
    plain = sever("train", "-c", str(missing))
    debug = sever("--debug", "train", "-c", str(missing))
    for result in (plain, debug):
        assert result.returncode == 1 and "missing.yml" in result.stderr
    assert "Traceback" not in plain.stderr and plain.stderr.startswith("Error:")
    assert "Traceback (most recent call last)" in debug.stderr and "ConfigError" in debug.stderr
