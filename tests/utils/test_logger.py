"""sever.utils.logger: only sever's loggers at INFO, each message once, the short epoch line; on a real demo train."""

import collections
import io
import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config
from sever.data_loader.demo import make_demo_data
from sever.utils.logger import setup_logging
from sever.utils.progress import INTERVAL_ENV

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) +(.*)$")


@pytest.fixture
def console(monkeypatch):
    """``console(**flags)``: setup_logging(**flags) with the console on a new string, returned."""

    def configure(**flags):
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)  # in the test itself: pytest's capture resets it after set-up
        setup_logging(**flags)
        return stream

    yield configure
    for name in ("sever", ""):
        logging.getLogger(name).handlers.clear()
    logging.getLogger().setLevel(logging.WARNING)


def test_only_severs_loggers_speak_at_info_and_other_libraries_warn_under_their_name(console):
    stream = console()
    logging.getLogger("tensorboard").info("No path found after events.out.tfevents.1")
    logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
    logging.getLogger("matplotlib.font_manager").warning("findfont: Font family 'x' not found.")
    logging.getLogger("sever.inference.tune").info("class 1: tuned")
    logging.getLogger("sever.inference.tune").debug("class 1: every score")
    said = [LOG_LINE.match(line).groups() for line in stream.getvalue().splitlines()]
    assert said == [("WARNING", "matplotlib.font_manager: findfont: Font family 'x' not found."),
                    ("INFO", "class 1: tuned")]


def test_verbose_shows_severs_debug_lines_and_quiet_only_its_warnings(console):
    loud = console(verbose=True)
    logging.getLogger("sever.x").debug("detail")
    logging.getLogger("other").debug("foreign detail")
    assert [LOG_LINE.match(line).groups() for line in loud.getvalue().splitlines()] == [("DEBUG", "detail")]
    quiet = console(quiet=True)
    logging.getLogger("sever.x").info("news")
    logging.getLogger("sever.x").warning("trouble")
    assert [LOG_LINE.match(line).groups() for line in quiet.getvalue().splitlines()][-1:] == [("WARNING", "trouble")]
    assert "news" not in quiet.getvalue()


def test_records_still_reach_root_handlers_and_print_once(console):
    stream = console()
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append  # an application's own root handler (a notebook's, a service's)
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("sever.x").info("once")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["once"], "sever's records still propagate"
    assert stream.getvalue().count("once") == 1, "the root's console handler does not print them again"


# ------------------------------------------------------------------ a real demo train through the CLI


@pytest.fixture(scope="module")
def demo_train(module_tmp):
    """A tiny train on the default demo dataset (already generated, as in a second `sever train -c demo`),
    TensorBoard on, a report at the end, a fresh matplotlib cache (whose building logs at INFO), a
    progress line at every update; stdout and stderr to files (no terminal).

    Returns ``(stdout, stderr, train.log)`` texts.
    """
    root = module_tmp("demo_train")
    make_demo_data(root / "demo")  # the default settings: what generate_demo makes
    config = tiny_config(root / "demo", root / "saved", epochs=2, tensorboard=True, report_images=1,
                         max_steps_per_epoch=2)
    config["data_loader"]["args"].update(generate_demo=True, validation_split=2)
    config["metrics"] = ["Dice", "DefectDice", "Presence"]
    (root / "demo.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "MPLCONFIGDIR": str(root / "matplotlib"), INTERVAL_ENV: "0", "OMP_NUM_THREADS": "1"}
    with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
        done = subprocess.run([sys.executable, "-m", "sever", "train", "-c", str(root / "demo.yml")],
                              stdout=out, stderr=err, env=env, timeout=600, check=False)
    stderr = (root / "stderr.txt").read_text()
    assert done.returncode == 0, stderr
    train_log = next((root / "saved").glob("tiny/*/train.log")).read_text()
    return (root / "stdout.txt").read_text(), stderr, train_log


def _messages(stderr):
    return [match.group(2) for match in map(LOG_LINE.match, stderr.splitlines()) if match]


@pytest.mark.slow
def test_a_demo_train_prints_no_line_of_another_library(demo_train):
    _, stderr, train_log = demo_train
    assert "fontManager" not in stderr and "No path found" not in stderr  # matplotlib's and tensorboard's INFO
    table = re.compile(r"^(class\b|mean\b|\(\d+ images\))")  # the tuned post-processing's table, one message
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        assert match or table.match(line), f"not a sever log line: {line!r}"
    names = re.findall(r"^\S+ \S+ (?:DEBUG|INFO|WARNING|ERROR) +(\S+): ", train_log, re.M)
    assert names and all(name == "sever" or name.startswith("sever.") for name in names), set(names)


@pytest.mark.slow
def test_a_demo_train_says_each_message_once(demo_train):
    _, stderr, train_log = demo_train
    repeated = [m for m, n in collections.Counter(_messages(stderr)).items() if n > 1]
    assert repeated == []
    assert len(re.findall(r"already holds the demo dataset", stderr)) == 1
    assert "DEBUG   sever.data_loader.demo: " in train_log, "later reads of the split say it at debug level"


@pytest.mark.slow
def test_a_demo_train_to_a_file_shows_its_progress_as_plain_lines(demo_train):
    stdout, stderr, _ = demo_train
    messages = _messages(stderr)
    time_ = r"\d+:\d\d:\d\d"
    rate = r"\d+\.\d img/s"
    for expected in (rf"epoch 1/2: 1/2 batch \(50%\), {rate}, ETA {time_}, loss \d\.\d{{4}}, run_eta {time_}",
                     rf"epoch 2/2: 2/2 batch in {time_}, {rate}, loss \d\.\d{{4}}, run_eta {time_}",
                     rf"validation of epoch 2/2: 1/1 batch in {time_}, {rate}",
                     rf"tune: 2/2 img in {time_}, {rate}"):
        assert any(re.fullmatch(expected, m) for m in messages), expected
    assert "\r" not in stderr + stdout, "no bars off a terminal"


@pytest.mark.slow
def test_the_epoch_line_holds_the_losses_the_per_class_dice_and_the_monitored_metric(demo_train):
    _, stderr, train_log = demo_train
    epochs = [m for m in _messages(stderr) if re.match(r"epoch \d/2  ", m)]
    number = r"\d\.\d{4}"
    per_class = "".join(f"  val_dice_{c} {number}" for c in range(4))
    assert len(epochs) == 2
    assert re.fullmatch(rf"epoch 1/2  train_loss {number}  val_loss {number}{per_class}  val_dice_mean {number}"
                        r"  \(run ETA \d+:\d\d:\d\d\)", epochs[0]), epochs[0]
    assert "presence_precision" not in stderr and "dice_defect" not in stderr
    values = re.findall(r"DEBUG   sever\.trainer\.base: epoch \d/2 values  (.*)", train_log)
    assert len(values) == 2
    for key in ("train_dice_0", "train_dice_defect_mean", "val_presence_precision_3", "val_presence_recall_mean",
                "val_dice_empty_mean", "train_images_per_s", "val_bce"):
        assert re.search(rf"(^|  ){key} \d+\.\d{{4}}", values[1]), key
