"""sever.utils.progress: a bar on a terminal, plain timed lines without one."""

import io
import logging
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sever.data_loader.augmentation import Normalization
from sever.exceptions import ConfigError
from sever.inference.checkpoints import LoadedModel
from sever.inference.predictor import Predictor
from sever.utils.logger import setup_logging
from sever.utils.progress import INTERVAL_ENV, Progress, progress, progress_interval


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "sever.utils.progress"]


def test_without_a_terminal_a_line_at_most_every_interval_and_one_at_the_end(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="sever.utils.progress")
    shown = Progress(10, "predict", interval=30, clock=clock, terminal=False)
    for _ in range(10):
        clock.now += 10  # 10 s per image
        shown.update()
    shown.close()
    # lines at 30 s (3 images), 60 s (6) and 90 s (9), not at 100 s: at most one per 30 s; then the end
    assert lines(caplog) == [
        "predict: 3/10 img (30%), 0.1 img/s, ETA 0:01:10",
        "predict: 6/10 img (60%), 0.1 img/s, ETA 0:00:40",
        "predict: 9/10 img (90%), 0.1 img/s, ETA 0:00:10",
        "predict: 10/10 img in 0:01:40, 0.1 img/s",
    ]


def test_a_pass_counts_batches_shows_images_per_second_and_starts_where_it_resumed(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="sever.utils.progress")
    shown = Progress(6, "epoch 2/5", "batch", initial=2, interval=5, clock=clock, terminal=False)
    clock.now += 4
    shown.update(images=8)
    shown.set_postfix(loss="0.5000")
    assert lines(caplog) == [], "4 s: before the first interval"
    clock.now += 4
    shown.update(images=8)
    shown.close()
    # 16 images in 8 s; 2 of the 4 batches left after 2 took 8 s
    assert lines(caplog) == ["epoch 2/5: 4/6 batch (66%), 2.0 img/s, ETA 0:00:08, loss 0.5000",
                             "epoch 2/5: 4/6 batch in 0:00:08, 2.0 img/s, loss 0.5000"]


def test_the_iterable_form_ends_with_a_line_only_when_run_to_the_end(caplog):
    caplog.set_level(logging.INFO, logger="sever.utils.progress")
    assert list(progress(range(3), "checking images", interval=1e9, terminal=False)) == [0, 1, 2]
    assert [line.split(" in ")[0] for line in lines(caplog)] == ["checking images: 3/3 img"]
    caplog.clear()
    for item in progress(range(3), "checking images", interval=1e9, terminal=False):
        break
    assert lines(caplog) == [], "an abandoned pass says nothing"


def test_on_a_terminal_a_bar_and_no_lines(monkeypatch, caplog):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    caplog.set_level(logging.INFO, logger="sever.utils.progress")
    with Progress(4, "tune", interval=0, leave=True) as shown:
        shown.update(4)
    assert re.search(r"tune: 100%[^\r]* 4/4 ", screen.getvalue()) and lines(caplog) == []


def test_quiet_switches_the_bar_off_too(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    setup_logging(quiet=True)
    try:
        with Progress(4, "quiet", interval=0, leave=True) as shown:
            shown.update(4)
        assert screen.getvalue() == ""
        setup_logging()
        with Progress(4, "shown", interval=0, leave=True) as shown:
            shown.update(4)
        assert "shown: 100%" in screen.getvalue()
    finally:
        logging.getLogger("sever").handlers.clear()
        logging.getLogger().handlers.clear()


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert progress_interval() == 0.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ConfigError, match=f"^{INTERVAL_ENV}: expected seconds >= 0, got 'soon'$"):
        progress_interval()


class Dark(torch.nn.Module):
    """Two classes of logits, the image itself minus 1 and 2."""

    def forward(self, x):
        return torch.cat([x - 1, x - 2], dim=1)


def test_a_real_prediction_to_a_file_logs_plain_lines_with_counts_rate_and_eta(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for index in range(5):
        paths.append(folder / f"{index}.png")
        cv2.imwrite(str(paths[-1]), np.full((32, 32), 40 * index, np.uint8))
    log = tmp_path / "console.txt"
    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line at every update
    with open(log, "w", encoding="utf-8") as file:
        monkeypatch.setattr(sys, "stderr", file)
        monkeypatch.setattr(sys, "stdout", file)
        setup_logging()  # the console handler writes to the file, which is no terminal
        try:
            model = LoadedModel(Dark().eval(), Path("run/checkpoints/m.pth"), {"classes": 2, "task": "segmentation"},
                                Normalization(0.5, 0.25), None)
            batches = list(Predictor([model]).predict_files(paths, batch_size=2, num_workers=0))
        finally:
            logging.getLogger("sever").handlers.clear()
            logging.getLogger().handlers.clear()
    assert [len(batch.names) for batch in batches] == [2, 2, 1]
    text = log.read_text()
    number = r"\d+(?:\.\d)?"
    found = re.findall(rf"^\d\d:\d\d:\d\d INFO    (predict: .*)$", text, re.M)
    assert [re.sub(number, "N", line) for line in found] == [
        "predict: N/N img (N%), N img/s, ETA N:N:N",
        "predict: N/N img (N%), N img/s, ETA N:N:N",
        "predict: N/N img (N%), N img/s, ETA N:N:N",
        "predict: N/N img in N:N:N, N img/s",
    ], text
    assert [line.split(" img")[0] for line in found] == ["predict: 2/5", "predict: 4/5", "predict: 5/5", "predict: 5/5"]
    assert "\r" not in text, "no bar"
