"""The command line as a user drives it."""

import subprocess
import sys

import yaml
from click.testing import CliRunner

from sever.cli import cli


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


def test_train_with_overrides_then_resume(make_config, tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(make_config()))
    result = invoke("train", "-c", str(path), "--set", "trainer.epochs=1")
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().split("run saved in ")[-1]
    resumed = invoke("train", "-r", run_dir, "--set", "trainer.epochs=2")
    assert resumed.exit_code == 0 and run_dir in resumed.output


def test_demo_data_command(tmp_path):
    result = invoke("demo-data", "-o", str(tmp_path / "demo"))
    assert result.exit_code == 0
    assert (tmp_path / "demo" / "train.csv").is_file()
    assert len(list((tmp_path / "demo" / "train_images").glob("*.jpg"))) == 256
