"""The command line as a user drives it."""

import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from sever.cli.app import cli


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
