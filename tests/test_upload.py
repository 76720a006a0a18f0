"""``sever upload``: staging, metadata, user errors and the kaggle calls, against a fake ``kaggle``."""

import hashlib
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config

from sever.cli.app import cli
from sever.data_loader.demo import make_demo_data
from sever.exceptions import SeverError
from sever.experiment import train
from sever.upload import (
    INFERENCE_KEYS,
    MAX_NAME,
    check_dataset_id,
    default_slug,
    default_title,
    find_credentials,
    format_size,
    plan_upload,
)
from sever.utils.checkpoint import load_checkpoint
from sever.utils.run import RunPaths

DATASET = "jane/sever-tiny-weights"

FAKE_KAGGLE = '''\
#!{python}
"""Records its arguments (and the folder it is given) instead of talking to Kaggle."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
record = {{"args": args}}
if "-p" in args:
    folder = Path(args[args.index("-p") + 1])
    record["files"] = sorted(path.name for path in folder.iterdir())
    record["metadata"] = json.loads((folder / "dataset-metadata.json").read_text())
with open(os.environ["FAKE_KAGGLE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
if args[:2] == ["datasets", "status"]:
    if os.environ.get("FAKE_KAGGLE_STATUS_FAILS"):
        print("401 Client Error: Unauthorized for url: https://api.kaggle.com/v1/status", file=sys.stderr)
        sys.exit(1)
    if args[2] in os.environ.get("FAKE_KAGGLE_EXISTING", "").split(","):
        print("ready", end="")
        sys.exit(0)
    print("404 Client Error: Not Found for url: https://api.kaggle.com/v1/status", file=sys.stderr)
    sys.exit(1)
if os.environ.get("FAKE_KAGGLE_REFUSES"):  # the real CLI prints refusals on stdout and exits 0
    print("Dataset creation error: The requested title is already in use by a dataset.")
    sys.exit(0)
print("Upload successful. Your private Dataset is being created.")
'''


@pytest.fixture(scope="module")
def run(module_tmp) -> RunPaths:
    """A real two-epoch run (EMA on) with checkpoint-epoch1/2.pth and model_best.pth, trained once."""
    root = module_tmp("upload")
    data = make_demo_data(root / "data", n_train=8, n_test=1, height=32, width=64, seed=1)
    config = tiny_config(data, root / "saved", ema_decay=0.9, max_steps_per_epoch=1)
    config["arch"]["args"]["encoder_name"] = "mobilenet_v2"
    config["augmentation"]["args"] = {"height": 32, "width": 32}
    return train(config)


def snapshot(root: Path) -> dict:
    """Every file below ``root``: content hash, size, link count and modification time.

    Hard links (the trainer links checkpoints to ``last.pth``) share one inode, so one hash each.
    """
    result, digests = {}, {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        if path.is_file() and stat.st_ino not in digests:
            digests[stat.st_ino] = hashlib.sha256(path.read_bytes()).hexdigest()
        result[path.relative_to(root).as_posix()] = (digests.get(stat.st_ino, "dir"), stat.st_size,
                                                     stat.st_nlink, stat.st_mtime_ns)
    return result


@pytest.fixture(autouse=True)
def run_untouched(request):
    """Every test that uses the run: it is byte-identical afterwards, no file added, removed or linked."""
    if "run" not in request.fixturenames:
        yield
        return
    run = request.getfixturevalue("run")
    before = snapshot(run.root)
    yield
    assert snapshot(run.root) == before


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """An empty home folder and no Kaggle settings in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def kaggle_log(tmp_path, monkeypatch) -> Path:
    """Put a fake ``kaggle`` first on PATH, logged in as jane; the file its calls are recorded in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kaggle"
    script.write_text(FAKE_KAGGLE.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "kaggle-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setenv("KAGGLE_USERNAME", "jane")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def invoke(*args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert "Traceback" not in result.output
    return result


# ---------------------------------------------------------------------------- staging


@pytest.mark.slow
def test_dry_run_stages_config_checkpoints_and_metadata(run, tmp_path):
    stage = tmp_path / "stage"
    result = invoke("upload", "-r", run.root, "-e", 2, "-e", 1, "--best", "--dataset-id", DATASET,
                    "--title", "Tiny sever weights", "--license", "CC-BY-4.0", "--staging", stage, "--dry-run")
    assert result.exit_code == 0, result.output
    names = ["config.yaml", "checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "model_best.pth"]
    assert sorted(path.name for path in stage.iterdir()) == sorted([*names, "dataset-metadata.json"])
    sources = [run.config, run.epoch_checkpoint(1), run.epoch_checkpoint(2), run.best]
    for name, source in zip(names, sources):
        assert (stage / name).read_bytes() == source.read_bytes()
        assert not (stage / name).samefile(source)
    metadata = json.loads((stage / "dataset-metadata.json").read_text())
    assert metadata["title"] == "Tiny sever weights" and metadata["id"] == DATASET
    assert metadata["licenses"] == [{"name": "CC-BY-4.0"}]
    assert "checkpoint-epoch1.pth, checkpoint-epoch2.pth, model_best.pth" in metadata["description"]
    size = format_size(run.best.stat().st_size)
    assert re.search(rf"model_best\.pth +{re.escape(size)}\n", result.output)
    assert "dry run: nothing sent" in result.output
    assert f"kaggle datasets create -p {stage}" in result.output
    assert f"kaggle datasets version -p {stage} -m 'sever upload of {run.root.name}:" in result.output


@pytest.mark.slow
def test_dry_run_needs_neither_kaggle_nor_credentials_and_keeps_its_temporary_folder(run, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no kaggle here
    result = invoke("upload", "-r", run.root, "-e", 1, "--dataset-id", DATASET, "--dry-run")
    assert result.exit_code == 0, result.output
    folder = Path(re.search(r"the staged files stay in (\S+)\.", result.output).group(1))
    try:
        assert sorted(path.name for path in folder.iterdir()) == [
            "checkpoint-epoch1.pth", "config.yaml", "dataset-metadata.json"]
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


@pytest.mark.slow
def test_weights_only_keeps_what_inference_needs_and_still_loads(run, tmp_path):
    stage = tmp_path / "stage"
    result = invoke("upload", "-r", run.root, "-e", 1, "--weights-only", "--dataset-id", DATASET,
                    "--staging", stage, "--dry-run")
    assert result.exit_code == 0, result.output
    full, slim = load_checkpoint(run.epoch_checkpoint(1)), load_checkpoint(stage / "checkpoint-epoch1.pth")
    assert {"optimizer", "lr_scheduler", "scaler", "rng", "step"} <= set(full)
    assert set(slim) == {key for key in INFERENCE_KEYS if key in full}
    assert "ema_state_dict" in slim
    for key, tensor in full["state_dict"].items():
        assert torch.equal(slim["state_dict"][key], tensor)
    assert slim["config"] == full["config"] and slim["epoch"] == 1
    before, after = run.epoch_checkpoint(1).stat().st_size, (stage / "checkpoint-epoch1.pth").stat().st_size
    assert after < before / 1.5
    assert f"checkpoint-epoch1.pth  {format_size(after)}  (was {format_size(before)})" in result.output
    assert "(full checkpoints: " in result.output


def test_format_size():
    assert [format_size(n) for n in (0, 1023, 1536, 38 * 2**20, 3 * 2**30)] == [
        "0 B", "1023 B", "1.5 KiB", "38.0 MiB", "3.0 GiB"]


# ---------------------------------------------------------------------------- dataset id and credentials


def test_default_slug_and_title_come_from_the_run_folder_and_fit_kaggle(tmp_path):
    run = RunPaths(tmp_path / "sever-unet-b5" / "1026_140000")
    assert default_slug(run) == "sever-unet-b5-1026-140000"
    assert default_title(run) == "sever-unet-b5 1026_140000"
    long = RunPaths(tmp_path / "_".join(["Very_Long.Experiment-Name"] * 4) / "0101_000000_2")
    slug, title = default_slug(long), default_title(long)
    assert slug.startswith("sever-very-long-experiment-name-") and slug.endswith("-0101-000000-2")
    assert len(slug) <= MAX_NAME and len(title) <= MAX_NAME and title.endswith(" 0101_000000_2")
    check_dataset_id(f"jane/{slug}")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["env", "config-dir", "dot-kaggle", "xdg"])
def test_user_name_for_the_default_id_comes_from_the_credentials(run, home, monkeypatch, where):
    folders = {"config-dir": home / "elsewhere", "dot-kaggle": home / ".kaggle", "xdg": home / ".config" / "kaggle"}
    if where == "env":
        monkeypatch.setenv("KAGGLE_USERNAME", "jim")
        monkeypatch.setenv("KAGGLE_KEY", "k")
    else:
        folders[where].mkdir(parents=True)
        (folders[where] / "kaggle.json").write_text(json.dumps({"username": "jim", "key": "k"}))
        if where == "config-dir":
            monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folders[where]))
    assert find_credentials().username == "jim"
    plan = plan_upload(run.root, [1], sending=False)
    assert plan.dataset_id == f"jim/{default_slug(run)}"
    assert plan.dataset_id == f"jim/sever-tiny-{run.root.name.replace('_', '-')}"


@pytest.mark.slow
def test_environment_overrides_kaggle_json_and_a_bare_token_needs_the_dataset_id(run, home, monkeypatch):
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "jim", "key": "k"}))
    monkeypatch.setenv("KAGGLE_USERNAME", "ann")
    assert find_credentials().username == "ann"
    (home / ".kaggle" / "kaggle.json").unlink()
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    with pytest.raises(SeverError, match="do not name the user: give --dataset-id"):
        plan_upload(run.root, [1], sending=False)
    assert plan_upload(run.root, [1], dataset_id=DATASET, sending=False).dataset_id == DATASET
    (home / ".kaggle" / "kaggle.json").write_text("{username: jim")
    with pytest.raises(SeverError, match=r"kaggle\.json: unreadable Kaggle credentials"):
        find_credentials()


# ---------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("dataset_id", ["jane", "jane/", "/sever-tiny", "jane/tiny", "jane/Sever_Tiny",
                                        "jane/sever-tiny/2", "jane/" + "x" * 51, "jane/-sever-tiny"])
def test_dataset_id_must_be_user_slash_slug(dataset_id):
    with pytest.raises(SeverError, match="is not USER/SLUG"):
        check_dataset_id(dataset_id)


@pytest.mark.slow
def test_error_cases_exit_1_with_a_clear_message(run, tmp_path, kaggle_log):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    cases = [
        (["-r", tmp_path / "missing", "-e", 1], "run folder not found"),
        (["-r", tmp_path / "not-a-run", "-e", 1], "not a sever run folder (no config.yaml)"),
        (["-r", run.root, "-e", 1, "-e", 7], "epoch 7 not saved in"),
        (["-r", run.root], "choose checkpoints with -e EPOCH (saved epochs: 1, 2) and/or --best"),
        (["-r", run.root, "-e", 1, "--dataset-id", "jane"], "'jane' is not USER/SLUG"),
        (["-r", run.root, "-e", 1, "--title", "tiny"], "--title 'tiny' has 4 characters; Kaggle needs 6 to 50"),
        (["-r", run.root, "-e", 1, "--license", "MIT"], "--license 'MIT' is not a Kaggle dataset licence"),
        (["-r", run.root, "-e", 1, "--staging", tmp_path / "full"], "must be an empty folder"),
        (["-r", run.root, "-e", 1, "--staging", run.root / "stage"], "inside the run folder"),
    ]
    for args, message in cases:
        result = invoke("upload", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert "saved epochs: 1, 2" in invoke("upload", "-r", run.root, "-e", 7).output
    assert calls(kaggle_log) == []


@pytest.mark.slow
def test_kaggle_not_installed_names_the_extra(run, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = invoke("upload", "-r", run.root, "-e", 1, "--dataset-id", DATASET)
    assert result.exit_code == 1
    assert "the kaggle command is not installed" in result.output and "pip install 'sever[kaggle]'" in result.output


@pytest.mark.slow
def test_missing_credentials_say_where_to_put_them(run, kaggle_log, home, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    result = invoke("upload", "-r", run.root, "-e", 1, "--dataset-id", DATASET)
    assert result.exit_code == 1
    assert "no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY" in result.output
    assert str(home / ".config" / "kaggle") in result.output
    assert calls(kaggle_log) == []


# ---------------------------------------------------------------------------- publishing


@pytest.mark.slow
def test_publish_creates_a_new_dataset_and_removes_the_temporary_folder(run, kaggle_log):
    result = invoke("upload", "-r", run.root, "-e", 1, "--best", "--weights-only")
    assert result.exit_code == 0, result.output
    dataset_id = f"jane/{default_slug(run)}"
    status, create = calls(kaggle_log)
    assert status["args"] == ["datasets", "status", dataset_id]
    assert create["args"][:3] == ["datasets", "create", "-p"] and len(create["args"]) == 4
    assert create["files"] == ["checkpoint-epoch1.pth", "config.yaml", "dataset-metadata.json", "model_best.pth"]
    assert create["metadata"]["id"] == dataset_id and create["metadata"]["title"] == default_title(run)
    assert create["metadata"]["licenses"] == [{"name": "CC0-1.0"}]
    assert not Path(create["args"][3]).exists()
    assert "Upload successful" in result.output
    assert f"created https://www.kaggle.com/datasets/{dataset_id}" in result.output


@pytest.mark.slow
def test_publish_adds_a_version_when_the_dataset_exists(run, kaggle_log, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", DATASET)
    notes = "epoch 2; $(touch pwned) `id` 'quoted'"
    stage = tmp_path / "stage"
    result = invoke("upload", "-r", run.root, "-e", 2, "--dataset-id", DATASET, "-m", notes, "--staging", stage)
    assert result.exit_code == 0, result.output
    status, version = calls(kaggle_log)
    assert status["args"] == ["datasets", "status", DATASET]
    assert version["args"] == ["datasets", "version", "-p", str(stage), "-m", notes]
    assert version["files"] == ["checkpoint-epoch2.pth", "config.yaml", "dataset-metadata.json"]
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()
    assert (stage / "checkpoint-epoch2.pth").is_file()  # a given staging folder is kept
    assert f"new version of https://www.kaggle.com/datasets/{DATASET}" in result.output


@pytest.mark.slow
def test_failing_kaggle_is_reported_with_what_it_printed(run, kaggle_log, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_STATUS_FAILS", "1")
    result = invoke("upload", "-r", run.root, "-e", 1, "--dataset-id", DATASET)
    assert result.exit_code == 1
    assert "kaggle datasets status failed (exit 1): 401 Client Error: Unauthorized" in result.output
    assert [call["args"][1] for call in calls(kaggle_log)] == ["status"]

    monkeypatch.delenv("FAKE_KAGGLE_STATUS_FAILS")
    monkeypatch.setenv("FAKE_KAGGLE_REFUSES", "1")
    result = invoke("upload", "-r", run.root, "-e", 1, "--dataset-id", DATASET)
    assert result.exit_code == 1
    assert "kaggle datasets create failed (exit 0): Dataset creation error: The requested title" in result.output
