"""SIGTERM and Ctrl-C honoured within seconds in every long phase (sever.utils.interrupt).

The phase tests run the real CLI in this process (its handlers are the ones ``sever`` installs)
on tiny data. A wrapped function of the phase (a training step, a validation forward, a
prediction, a tuning update) sleeps on each call so the phase is deterministically slow, and
sends SIGTERM to this process on its ``at``-th call, i.e. inside the phase. Each test then
checks the exit status (128 + 15), the time from the signal to the exit (under 10 s: the
grace Kaggle, SLURM and Kubernetes give is about 30 s), that the phase stopped at the next
batch (no call after the one the signal landed in), the one command printed to continue,
and, for training and ``sever auto``, that this command completes.
"""

import functools
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_config

from sever.cli.app import cli
from sever.exceptions import Interrupted
from sever.study.folder import StudyPaths
from sever.utils import interrupt
from sever.utils.checkpoint import load_checkpoint

GRACE_S = 10.0


class SlowSignalled:
    """Wraps ``original``: each call sleeps ``delay`` s; the ``at``-th sends SIGTERM (and notes when) first."""

    def __init__(self, original, at: int = 1, delay: float = 0.3, armed=lambda: True):
        self.original, self.at, self.delay, self.armed = original, at, delay, armed
        self.calls, self.sent_at = 0, None

    def __call__(self, *args, **kwargs):
        if self.armed():
            self.calls += 1
            if self.calls == self.at:
                self.sent_at = time.monotonic()
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(self.delay)
        return self.original(*args, **kwargs)

    def as_method(self):
        def method(*args, **kwargs):
            return self(*args, **kwargs)
        return method


def invoke(args):
    """``sever ARGS`` in this process: (exit code, output, seconds since the wrapped call signalled or None)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output, time.monotonic()


def assert_stopped(code, output, ended, slow, command):
    """Exit 143 within the grace time, the phase stopped at the next batch, ``command`` printed to continue."""
    assert slow.sent_at is not None, "the signal was never sent: the phase did not run"
    assert code == 128 + signal.SIGTERM, output
    assert ended - slow.sent_at < GRACE_S, f"exited {ended - slow.sent_at:.1f} s after SIGTERM"
    assert slow.calls == slow.at, f"{slow.calls - slow.at} more batches ran after the signal"
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1].endswith(f"Resume with: {command}"), output


def write_config(demo_dir, tmp_path, **trainer):
    config = tiny_config(demo_dir, tmp_path / "saved", **{"max_steps_per_epoch": 3, "tune_postprocess": False,
                                                          **trainer})
    config["data_loader"]["args"].update(batch_size=2, validation_split=12)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def only_run(tmp_path) -> Path:
    (run,) = (tmp_path / "saved" / "tiny").iterdir()
    return run


# ----------------------------------------------------------------------------- the mechanism


def test_a_listening_loop_stops_at_the_next_item_and_says_what_stopped():
    seen = []
    with interrupt.handled(), pytest.raises(Interrupted) as stop:
        for item in interrupt.checked(range(5), "counting"):
            seen.append(item)
            if item == 1:
                signal.raise_signal(signal.SIGTERM)
    assert seen == [0, 1]
    assert (str(stop.value), stop.value.signal_number) == ("SIGTERM received: stopped during counting", 15)
    assert interrupt.requested() is None, "the outermost handled() forgets the request"


def test_outside_a_listening_loop_the_signal_stops_at_once_and_a_second_one_aborts(monkeypatch):
    monkeypatch.setattr(interrupt, "REPEAT_S", 0.0)  # the second signal comes at once here
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupt.handled():
        with pytest.raises(Interrupted, match="^SIGINT received: stopped$") as stop:
            signal.raise_signal(signal.SIGINT)
        assert stop.value.signal_number == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_the_same_stop_passed_on_twice_is_one_stop():
    seen = []
    with interrupt.handled(), pytest.raises(Interrupted):
        for item in interrupt.checked(range(3), "counting"):
            seen.append(item)
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # e.g. from the process group and from a parent: no abort
    assert seen == [0]


def test_a_loop_that_ends_after_the_signal_still_stops():
    with interrupt.handled(), pytest.raises(Interrupted):
        for _ in interrupt.checked([1], "the last item"):
            signal.raise_signal(signal.SIGTERM)


def test_the_outer_layer_names_the_command_that_continues():
    stop = Interrupted("SIGTERM received: stopped during fold 0", 15, "sever train -r runs/fold0")
    assert str(stop.resume_with("sever auto --resume out")) == (
        "SIGTERM received: stopped during fold 0. Resume with: sever auto --resume out")


# ----------------------------------------------------------------------------- the phases


@pytest.mark.slow
def test_sigterm_in_a_training_step(demo_dir, tmp_path, monkeypatch):
    from sever.trainer.trainer import Trainer

    config = write_config(demo_dir, tmp_path)
    slow = SlowSignalled(Trainer._train_step, at=2)
    monkeypatch.setattr(Trainer, "_train_step", slow.as_method())
    code, output, ended = invoke(["train", "-c", config])
    run = only_run(tmp_path)
    assert_stopped(code, output, ended, slow, f"sever train -r {run}")
    assert "SIGTERM received: stopped at epoch 1 after 2 batches and saved" in output
    monkeypatch.undo()
    code, output, _ = invoke(["train", "-r", run])
    assert code == 0, output
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 2


@pytest.mark.slow
def test_sigterm_in_validation_keeps_the_last_epoch_and_resume_validates_again(demo_dir, tmp_path, monkeypatch):
    from sever.trainer.trainer import SegmentationTrainer

    config = write_config(demo_dir, tmp_path)
    validating = {"epoch": 0}
    original_epoch = SegmentationTrainer._valid_epoch

    def valid_epoch(self, epoch):
        validating["epoch"] = epoch
        return original_epoch(self, epoch)

    slow = SlowSignalled(SegmentationTrainer._valid_forward, at=2, armed=lambda: validating["epoch"] == 2)
    monkeypatch.setattr(SegmentationTrainer, "_valid_epoch", valid_epoch)
    monkeypatch.setattr(SegmentationTrainer, "_valid_forward", slow.as_method())
    code, output, ended = invoke(["train", "-c", config])
    run = only_run(tmp_path)
    assert_stopped(code, output, ended, slow, f"sever train -r {run}")
    assert "stopped during the validation of epoch 2; a resume trains that epoch again from" in output
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 1
    monkeypatch.undo()
    code, output, _ = invoke(["train", "-r", run])
    assert code == 0, output
    assert re.search(r"epoch 2/2 .*val_dice", (run / "train.log").read_text())
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 2


@pytest.mark.slow
def test_sigterm_in_the_runs_self_tuning(demo_dir, tmp_path, monkeypatch):
    from sever.inference.tune import TuneStatistics

    config = write_config(demo_dir, tmp_path, epochs=1, tune_postprocess=True)
    slow = SlowSignalled(TuneStatistics.update, at=2)
    monkeypatch.setattr(TuneStatistics, "update", slow.as_method())
    code, output, ended = invoke(["train", "-c", config])
    run = only_run(tmp_path)
    assert_stopped(code, output, ended, slow, f"sever train -r {run}")
    assert not (run / "postprocess.yml").exists()
    monkeypatch.undo()
    code, output, _ = invoke(["train", "-r", run])
    assert code == 0, output
    assert (run / "postprocess.yml").is_file()


@pytest.mark.slow
def test_sigterm_in_out_of_fold_prediction_names_the_study(demo_dir, tmp_path, monkeypatch):
    from sever.inference.predictor import Predictor

    config = write_config(demo_dir, tmp_path, epochs=1)
    slow = SlowSignalled(Predictor.predict, at=2)  # no tuning, no report: only the out-of-fold maps predict
    monkeypatch.setattr(Predictor, "predict", slow.as_method())
    code, output, ended = invoke(["train", "-c", config, "--folds", "2"])
    study = StudyPaths(only_run(tmp_path))
    assert_stopped(code, output, ended, slow, f"sever train -r {study.root}")
    assert "stopped during fold 0 out-of-fold" in output
    assert [entry.status for entry in study.entries()] == ["running", "pending"]
    monkeypatch.undo()
    code, output, _ = invoke(["train", "-r", study.root])
    assert code == 0, output
    assert [entry.status for entry in study.entries()] == ["done", "done"]
    assert [len(list(study.oof_dir(fold).iterdir())) for fold in (0, 1)] == [12, 12]  # every image's map, once


@pytest.fixture
def trained_run(demo_dir, tmp_path):
    code, output, _ = invoke(["train", "-c", write_config(demo_dir, tmp_path, epochs=1)])
    assert code == 0, output
    return only_run(tmp_path)


@pytest.mark.slow
def test_sigterm_in_predict_writes_no_submission(demo_dir, tmp_path, monkeypatch, trained_run):
    from sever.inference.predictor import Predictor

    slow = SlowSignalled(Predictor.predict, at=2)
    monkeypatch.setattr(Predictor, "predict", slow.as_method())
    command = ["predict", "-m", trained_run, "-i", demo_dir / "test_images", "-o", tmp_path / "sub.csv",
               "--batch-size", "1", "--device", "cpu"]
    code, output, ended = invoke(command)
    assert_stopped(code, output, ended, slow, "sever " + " ".join(map(str, command)))
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.slow
def test_sigterm_in_report(tmp_path, monkeypatch, trained_run):
    from sever.inference.predictor import Predictor

    slow = SlowSignalled(Predictor.predict, at=2)
    monkeypatch.setattr(Predictor, "predict", slow.as_method())
    code, output, ended = invoke(["report", trained_run])
    assert_stopped(code, output, ended, slow, f"sever report {trained_run}")
    assert not (trained_run / "report" / "index.html").exists()


# ----------------------------------------------------------------------------- sever auto


@pytest.fixture
def auto_data(tmp_path, monkeypatch):
    from plan_datasets import EPOCHS_ONLY, fake_target

    from sever.data_loader.demo import make_demo_data
    from sever.planning.plan import make_plan

    monkeypatch.setattr("sever.study.auto.device_target",
                        lambda device, classes, fp: fake_target(step=1.0, per_image=True))
    # planned for epochs: a study to stop (the learning rules give this tiny budget one run)
    monkeypatch.setattr("sever.study.auto.make_plan", functools.partial(make_plan, policy=EPOCHS_ONLY))
    return make_demo_data(tmp_path / "demo", n_train=16, n_test=3, height=64, width=256, seed=11)


def check_auto_finished(output, out):
    study = StudyPaths(Path(re.search(r"^study saved in (.+)$", output, re.M).group(1)))
    assert study.root.parent.parent == out
    assert all(entry.status == "done" for entry in study.entries())
    assert study.postprocess.is_file()
    assert output.strip().splitlines()[-1] == f"next: sever predict -m {study.root} -i IMAGES -o submission.csv"


@pytest.mark.slow
def test_sigterm_in_auto_training_then_auto_resume_finishes(auto_data, tmp_path, monkeypatch):
    from sever.trainer.trainer import Trainer

    out = tmp_path / "out"
    slow = SlowSignalled(Trainer._train_step, at=1)  # the first of fold 0's two batches an epoch
    monkeypatch.setattr(Trainer, "_train_step", slow.as_method())
    code, output, ended = invoke(["auto", auto_data, "--device", "cpu", "--time", "1m", "-o", out])
    assert_stopped(code, output, ended, slow, f"sever auto --resume {out}")
    assert "SIGTERM received: stopped at epoch 1 after 1 batches and saved" in output
    monkeypatch.setattr(Trainer, "_train_step", slow.original)
    code, output, _ = invoke(["auto", "--resume", out])
    assert code == 0, output
    check_auto_finished(output, out)


@pytest.mark.slow
def test_sigterm_in_auto_self_tuning_then_auto_resume_tunes(auto_data, tmp_path, monkeypatch):
    import sever.study.rounds as rounds
    from sever.inference.tune import TuneStatistics

    out = tmp_path / "out"
    tuning = {"study": False}
    original_tune = rounds.tune_out_of_fold

    def study_tuning(*args, **kwargs):  # arms the slow update for the study's own tuning only
        tuning["study"] = True
        try:
            return original_tune(*args, **kwargs)
        finally:
            tuning["study"] = False

    slow = SlowSignalled(TuneStatistics.update, at=1, armed=lambda: tuning["study"])
    monkeypatch.setattr(rounds, "tune_out_of_fold", study_tuning)
    monkeypatch.setattr(TuneStatistics, "update", slow.as_method())
    code, output, ended = invoke(["auto", auto_data, "--device", "cpu", "--time", "1m", "-o", out])
    assert_stopped(code, output, ended, slow, f"sever auto --resume {out}")
    assert "stopped during tuning on saved probabilities" in output
    monkeypatch.undo()
    monkeypatch.setattr("sever.study.auto.device_target", lambda *args: pytest.fail("a resume plans nothing"))
    code, output, _ = invoke(["auto", "--resume", out])
    assert code == 0, output
    check_auto_finished(output, out)


def test_auto_resume_refuses_a_folder_auto_did_not_make(tmp_path):
    code, output, _ = invoke(["auto", "--resume", tmp_path])
    assert code == 1 and "not an output folder of sever auto (no auto.yml)" in output


SLOW_STUDY_TUNING = '''
import sys, time
sys.path.insert(0, {tests!r})
import functools
from plan_datasets import EPOCHS_ONLY, fake_target
import sever.study.auto as auto
import sever.study.rounds as rounds
from sever.inference.tune import TuneStatistics

auto.device_target = lambda device, classes, fp: fake_target(step=1.0, per_image=True)
auto.make_plan = functools.partial(auto.make_plan, policy=EPOCHS_ONLY)  # a study, as in the fixture auto_data
_tune, _update, _slow = rounds.tune_out_of_fold, TuneStatistics.update, []


def tune(*args, **kwargs):
    _slow.append(True)
    sys.stderr.write("@@study-tuning\\n")
    sys.stderr.flush()
    return _tune(*args, **kwargs)


def update(self, *args, **kwargs):
    if _slow:
        time.sleep(2.0)
    return _update(self, *args, **kwargs)


rounds.tune_out_of_fold, TuneStatistics.update = tune, update
'''


@pytest.mark.slow
def test_a_real_sever_auto_process_stopped_in_its_self_tuning_exits_143_with_the_command(auto_data, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    hooks, out = tmp_path / "hooks", tmp_path / "out"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_STUDY_TUNING.format(tests=str(Path(__file__).parents[1])))
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sever", "auto", str(auto_data), "--device", "cpu", "--time",
                                "1m", "-o", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if line.startswith("@@study-tuning"):
                break
        time.sleep(0.5)  # inside the first (2-s) batch of the study's tuning
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    waited = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert waited < GRACE_S, f"exited {waited:.1f} s after SIGTERM"
    assert stderr.strip().splitlines()[-1] == (
        f"SIGTERM received: stopped during tuning on saved probabilities. Resume with: sever auto --resume {out}")
    code, output, _ = invoke(["auto", "--resume", out])
    assert code == 0, output
    check_auto_finished(output, out)
