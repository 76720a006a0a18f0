"""sever as an installed package: metadata, built-in experiments, offline imports."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from sever.cli.app import cli
from sever.exceptions import ConfigError
from sever.utils.config import builtin_experiments, resolve_experiment

REPO = Path(__file__).resolve().parents[1]

# Any attempt to reach the network fails as it does offline, and is recorded.
OFFLINE = """
import sys, urllib.error, urllib.request
class Offline:
    def open(self, *args, **kwargs):
        print("NETWORK", file=sys.stderr)
        raise urllib.error.URLError("offline")
urllib.request.build_opener = lambda *handlers: Offline()
"""


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def run_offline(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-W", "always", "-c", OFFLINE + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_torch_is_capped_only_at_its_next_major_version():
    requirements = {Requirement(line).name: Requirement(line) for line in project()["dependencies"]}
    assert requirements["torch"].specifier.contains("2.15.0")
    assert requirements["torch"].specifier.contains("2.99.0")
    assert not requirements["torch"].specifier.contains("3.0.0")
    assert requirements["torchvision"].specifier.contains("0.99.0")
    assert not requirements["torchvision"].specifier.contains("1.0.0")


def test_the_all_extra_holds_every_optional_feature():
    extras = project()["optional-dependencies"]
    wanted = {extra for extra in extras if extra not in ("test", "dev", "all")}  # the developers' tools are no feature
    (line,) = extras["all"]
    assert Requirement(line).extras == wanted


def test_licence_file_is_mit_and_declared():
    assert project()["license"] == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "2026 sever contributors" in text


def test_each_experiment_file_exists_once_and_the_top_level_folder_shows_the_packaged_ones():
    packaged = REPO / "sever" / "experiments"
    assert (REPO / "experiments").resolve() == packaged.resolve()
    assert set(builtin_experiments()) == {path.stem for path in packaged.glob("*.yml")} >= {"demo", "config"}


def test_a_built_in_experiment_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_experiment("demo") == REPO / "sever" / "experiments" / "demo.yml"
    assert resolve_experiment("neu-seg.yml").name == "neu-seg.yml"
    own = tmp_path / "demo"
    own.write_text("name: mine\n")
    assert resolve_experiment("demo") == Path("demo")  # a file of that name wins


def test_a_name_that_is_neither_file_nor_built_in_lists_the_built_in_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"built-in: config, demo, .*Did you mean 'demo'"):
        resolve_experiment("Demo")
    result = CliRunner().invoke(cli, ["train", "-c", "nosuch", "--set", "trainer.epochs=1"])
    assert result.exit_code == 1
    assert "config file not found: nosuch" in result.output and "sever-unet-b5" in result.output


@pytest.mark.slow
def test_sever_train_dash_c_demo_trains_from_another_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sever", "train", "-c", "demo", "--set", "trainer.epochs=1",
         "--set", "trainer.max_steps_per_epoch=1", "--set", "data_loader.args.num_workers=0",
         "--set", "augmentation.args.height=64", "--set", "augmentation.args.width=64", "--set", "device=cpu"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "data" / "demo" / "train.csv").is_file()
    (config,) = (tmp_path / "saved" / "demo").glob("*/config.yaml")
    assert "name: demo" in config.read_text()


@pytest.mark.parametrize("code", [
    "import sever.data_loader.augmentation",
    "import runpy\nsys.argv = ['sever', '--version']\ntry:\n    runpy.run_module('sever', run_name='__main__')\n"
    "except SystemExit:\n    pass",
], ids=["library", "command-line"])
def test_albumentations_does_not_look_for_updates(code, tmp_path):
    result = run_offline(code + "\nimport albumentations", tmp_path)
    assert "NETWORK" not in result.stderr and "Error fetching version info" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_users_own_albumentations_setting_is_kept(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "0"}
    result = subprocess.run([sys.executable, "-c", "import os, sever; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0"
