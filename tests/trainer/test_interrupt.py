"""A real ``sever train`` process stopped mid-epoch (SIGTERM), its resumption killed in the middle
of a checkpoint save (SIGKILL), then resumed again with ``sever train -r RUN_DIR``: no checkpoint
is ever corrupt, and the final weights equal those of an uninterrupted run (CPU, one thread,
fixed seed, no loader workers).

The child processes import a ``sitecustomize`` (from their PYTHONPATH, never sever's code) that
writes checkpoints slowly in chunks and prints a marker line to stderr at each save and backward
pass, so the test can strike at a known moment. Each child pays torch's start-up (seconds of
CPU), so the steps share one test, and the last resume and the uninterrupted run happen in this
process. The tiny config uses a MobileNetV2 U-Net to keep checkpoints small.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import REPO, tiny_config

from sever import experiment
from sever.cli.app import cli
from sever.utils.checkpoint import load_checkpoint
from sever.utils.config import load_config

pytestmark = pytest.mark.slow  # every test here trains a model

HOOKS = '''
import io, os, sys, time
import torch

_save, _backward = torch.save, torch.autograd.backward


def _mark(text):
    sys.stderr.write("@@" + text + "\\n")
    sys.stderr.flush()


def slow_save(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    _save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    _mark("save-start " + str(getattr(f, "name", f)))
    chunk = len(data) // 20 + 1
    for start in range(0, len(data), chunk):
        f.write(data[start:start + chunk])
        f.flush()
        time.sleep(0.03)
    _mark("save-end " + str(getattr(f, "name", f)))


def marked_backward(*args, **kwargs):
    _backward(*args, **kwargs)
    _mark("backward")
    time.sleep(float(os.environ.get("STEP_DELAY", "0")))


torch.save = slow_save
torch.autograd.backward = marked_backward
'''

STEPS = 4  # batches per epoch


@pytest.fixture
def setup(demo_dir, tmp_path):
    """``(config file, child environment, runs folder)``."""
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(HOOKS)
    config = tiny_config(demo_dir, tmp_path / "saved", epochs=2, max_steps_per_epoch=STEPS)
    config["arch"] = {"type": "Unet", "args": {"encoder_name": "mobilenet_v2",
                                               "decoder_args": {"decoder_channels": [32, 16, 16, 8, 8]}}}
    config["data_loader"]["args"].update(batch_size=2, validation_split=2)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'hooks'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    return path, env, tmp_path / "saved" / "tiny"


def start(args, env, **extra):
    return subprocess.Popen([sys.executable, "-m", "sever", "train", *args], env={**env, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def wait_for(process, marker, count=1):
    """Read the child's stderr until ``marker`` has been seen ``count`` times."""
    seen = 0
    for line in process.stderr:
        if line.startswith("@@") and marker in line:
            seen += 1
            if seen == count:
                return
    process.wait()
    raise AssertionError(f"the child exited ({process.returncode}) before {marker!r} x{count}")


@contextlib.contextmanager
def single_threaded():
    """Run in this process with one thread, like the children (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_interrupted_and_killed_training_resumes_to_the_same_weights(setup):
    path, env, runs_dir = setup
    process = start(["-c", str(path)], env, STEP_DELAY="0.3")
    try:
        wait_for(process, "save-end")  # epoch 1 is saved
        wait_for(process, "backward", count=2)  # two steps into epoch 2
        process.send_signal(signal.SIGTERM)
    finally:
        code, output = finish(process)
    (run_dir,) = runs_dir.iterdir()
    checkpoints = run_dir / "checkpoints"
    assert code == 128 + signal.SIGTERM, output
    assert "SIGTERM received: stopped at epoch 2 after" in output
    assert f"Resume with: sever train -r {run_dir}" in output and "Traceback" not in output
    interrupted = load_checkpoint(checkpoints / "last.pth")
    assert interrupted["epoch"] == 1 and 0 < interrupted["step"] < STEPS, "stopped mid-epoch"

    process = start(["-r", str(run_dir)], env)
    try:
        wait_for(process, "save-start")  # the end of epoch 2
        time.sleep(0.15)
        process.kill()
    finally:
        finish(process)
    assert list(checkpoints.glob(".last.pth.*.tmp")), "the kill was meant to land mid-save"
    for checkpoint in checkpoints.glob("*.pth"):
        assert load_checkpoint(checkpoint)["epoch"] == 1, checkpoint.name
    assert load_checkpoint(checkpoints / "last.pth")["step"] == interrupted["step"]

    with single_threaded():
        result = CliRunner().invoke(cli, ["train", "-r", str(run_dir)])
        expected = load_checkpoint(experiment.train(load_config(path)).last)["state_dict"]  # uninterrupted
    assert result.exit_code == 0, result.output
    assert not list(checkpoints.glob(".*.tmp")), "the killed save's leftover is cleared"
    resumed = load_checkpoint(checkpoints / "last.pth")
    assert resumed["epoch"] == 2
    different = [key for key in expected if not torch.equal(expected[key], resumed["state_dict"][key])]
    assert expected.keys() == resumed["state_dict"].keys() and not different, different[:3]
