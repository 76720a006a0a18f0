"""sever report: the page training writes, its figures and numbers, and partial reports on bad input."""

import html
import json
import logging
import re
import shutil
import signal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import tiny_config
from inference_runs import invoke, make_run
from report_runs import trained  # noqa: F401 (fixture)

from sever import experiment
from sever.trainer.base import BaseTrainer
from sever.exceptions import TrainingInterrupted
from sever.inference.evaluate import evaluate_predictions, predictor_split
from sever.inference.predictor import build_predictor, load_settings
from sever.report import build, report_after_training, write_report
from sever.report.history import truncated
from sever.utils.time_budget import Deadline


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def image_sources(index: Path) -> list[str]:
    parser = _Images()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.sources


def missing_box(index: Path) -> str:
    """The text of the page's "Missing from this report" box ('' when there is none)."""
    match = re.search(r"<div class='missing'>(.*?)</div>", index.read_text(encoding="utf-8"), re.S)
    return match.group(1) if match else ""


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:  # noqa: F811 (fixture)
    """A copy of the trained run to damage or extend, without its report."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("report"))
    return copy


@pytest.mark.slow
def test_training_writes_the_report_with_every_figure(trained):  # noqa: F811 (fixture)
    index = trained / "report" / "index.html"
    sources = image_sources(index)
    assert sources == ["loss.png", "dice.png", "lr.png", "classes.png", "precision_recall.png", "thresholds.png",
                       "distributions.png", "best.jpg", "worst.jpg"]
    for source in sources:
        assert (index.parent / source).stat().st_size > 1000, source
    text = index.read_text(encoding="utf-8")
    assert "6 of the 6 validation images" in text  # the 16-image cap after training is above the split's 6
    assert "1 pits" in text and "4 patches" in text  # the class names label the table
    assert "http" not in text and "<script" not in text  # nothing to fetch: it opens offline


@pytest.mark.slow
def test_curves_from_tensorboard_name_the_classes_and_pair_training_with_validation(trained):  # noqa: F811
    panels = json.loads((trained / "report" / "dice.json").read_text())["axes"]
    per_class = next(panel for panel in panels if panel["title"].startswith("dice per class"))
    labels = [line["label"] for line in per_class["lines"]]
    assert labels == [f"{split} {name}" for name in ("1 pits", "2 inclusion", "3 scratches", "4 patches")
                      for split in ("train", "val")]  # TensorBoard's class-named tags read back in class order
    assert [line["x"] for line in per_class["lines"]] == [[1.0, 2.0]] * 8
    loss = json.loads((trained / "report" / "loss.json").read_text())["axes"]
    assert {line["label"] for panel in loss for line in panel["lines"]} >= {"train bce", "val bce", "train loss",
                                                                          "val loss"}


@pytest.mark.slow
def test_mosaic_captions_say_how_they_rank(trained):  # noqa: F811 (fixture)
    text = (trained / "report" / "index.html").read_text(encoding="utf-8")
    worst = text.split("<h2>Worst validation images</h2>")[1].split("<img")[0]
    assert "the best among" not in worst and "Lowest first" in worst
    assert "classes present in the truth or the prediction" in worst


@pytest.mark.slow
def test_the_cap_after_training_names_trainer_report_images(run_copy):
    report_after_training(run_copy, 3)
    text = (run_copy / "report" / "index.html").read_text(encoding="utf-8")
    assert "3 of the 6 validation images" in text and "capped by trainer.report_images 3" in text
    assert "--max-images" not in text


@pytest.mark.slow
@pytest.mark.parametrize("history_seconds, budget, images", [(0, 15, 6), (5, 15, 3), (5, 10, 0)])
def test_a_deadline_fits_the_images_to_the_time_the_sections_without_them_leave(run_copy, monkeypatch,
                                                                                 history_seconds, budget, images):
    now = [0.0]
    draw_curves = build._curves

    def slow_curves(*args):  # reading the history and drawing its figures "take" history_seconds
        now[0] += history_seconds
        return draw_curves(*args)

    monkeypatch.setattr(build, "_curves", slow_curves)
    # 1 s an image; kept back: the drawing after the predictions (as long as the history took) and the
    # 2 examples' second pass (2 s)
    report = write_report(run_copy, max_images=6, examples=1, cap_option="trainer.report_images",
                          deadline=Deadline(budget, clock=lambda: now[0]), seconds_per_image=1.0)
    text = html.unescape(report.index.read_text(encoding="utf-8"))
    assert [s.title for s in report.sections][1] == "Losses"  # the sections without images are all drawn
    if images == 6:
        assert "6 of the 6 validation images" in text and "capped" not in text
    elif images:
        assert f"{images} of the 6 validation images" in text
        assert "capped by the time left in the run's budget, at 1.00 s an image" in text
    else:
        assert "Validation scores" not in [s.title for s in report.sections]
        assert f"none fitted in the time left in the run's budget, at 1.00 s an image; draw them with sever " \
               f"report {run_copy}" in html.unescape(missing_box(report.index))


@pytest.mark.slow
def test_iou_stands_beside_dice_in_the_table(run_copy):
    report = write_report(run_copy, max_images=6)
    table = next(s.table for s in report.sections if s.title == "Validation scores")
    assert "<th>Dice</th><th>IoU</th>" in table
    dice = [float(v) for v in re.findall(r"<tr><td>\d [a-z]+</td><td>([\d.]+)</td>", table)]
    iou = [float(v) for v in re.findall(r"<tr><td>\d [a-z]+</td><td>[\d.]+</td><td>([\d.]+)</td>", table)]
    assert len(dice) == len(iou) == 4
    assert all(i <= d + 1e-4 for d, i in zip(dice, iou))  # IoU = D / (2 - D) <= D per image


def test_report_images_zero_trains_without_a_report(make_config):
    run = experiment.train(make_config(epochs=1, max_steps_per_epoch=1, report_images=0))
    assert run.best.exists() and not (run.root / "report").exists()


@pytest.mark.slow
def test_report_scores_equal_sever_evaluate(run_copy):
    predictor = build_predictor([run_copy], device="cpu", amp="off")
    tuned = run_copy / "postprocess.yml"  # the run tuned itself: the report scores with its settings
    assert tuned.is_file()
    expected = evaluate_predictions(predictor, load_settings(tuned, 4, False), *predictor_split(predictor),
                                    num_workers=0)
    report = write_report(run_copy, max_images=50)
    table = next(s.table for s in report.sections if s.title == "Validation scores")
    assert f"<td>mean</td><td>{expected.mean_dice:.4f}</td>" in table
    for c, ((tn, fp), (fn, tp)) in enumerate(expected.confusion()):  # Dice, then IoU, then the confusion
        assert re.search(f"<td>{expected.class_dice[c]:.4f}</td><td>[0-9.]+</td><td>{tp}</td><td>{fp}</td>"
                         f"<td>{fn}</td><td>{tn}</td>", table)


@pytest.mark.slow
def test_max_images_caps_the_predictions_and_says_so(run_copy):
    result = invoke("report", run_copy, "--max-images", 3, "--examples", 1)
    assert result.exit_code == 0, result.output
    text = (run_copy / "report" / "index.html").read_text(encoding="utf-8")
    assert "3 of the 6 validation images" in text and "capped by --max-images 3" in text
    assert "wrote " + str(run_copy / "report" / "index.html") in result.output


@pytest.mark.slow
def test_tuned_settings_in_the_run_are_used_and_their_absence_is_said(run_copy):
    (run_copy / "postprocess.yml").unlink()  # as if trained with trainer.tune_postprocess: false
    assert "no sever tune output" in missing_box(write_report(run_copy, max_images=6).index)
    (run_copy / "postprocess.yml").write_text("threshold: [0.3, 0.35, 0.4, 0.45]\nmin_pixels: 0\n")
    index = write_report(run_copy, max_images=6).index
    assert "tune" not in missing_box(index)
    assert "Post-processing tuned by sever tune" in index.read_text(encoding="utf-8")


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = invoke("report", tmp_path)
    assert result.exit_code == 1
    assert "is neither a sever run folder" in result.output and "Traceback" not in result.output
    assert invoke("report", tmp_path / "absent").output.startswith("Error: run folder not found")


@pytest.mark.slow
def test_truncated_events_give_a_partial_report_that_says_so(run_copy):
    events = next((run_copy / "runs").glob("events.out.tfevents.*"))
    assert not truncated(events)
    events.write_bytes(events.read_bytes()[:-30])
    result = invoke("report", run_copy, "--max-images", 2, "--examples", 1)
    assert result.exit_code == 0, result.output
    assert truncated(events)
    box = missing_box(run_copy / "report" / "index.html")
    assert "truncated record" in box and events.name in box
    assert "loss.png" in image_sources(run_copy / "report" / "index.html")  # the complete values still drawn


@pytest.mark.slow
def test_a_run_stopped_before_its_first_validation_gets_a_training_only_report(make_config, monkeypatch, tmp_path):
    saved = BaseTrainer._save_epoch

    def save_then_sigterm(self, epoch, improved):  # what SIGTERM during epoch 1 leads to
        saved(self, epoch, improved)
        self._stop_signal = signal.SIGTERM

    monkeypatch.setattr(BaseTrainer, "_save_epoch", save_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        experiment.train(make_config(epochs=3, val_period=3, max_steps_per_epoch=1))
    run = next((tmp_path / "saved" / "tiny").iterdir())
    assert not (run / "report").exists()  # an interrupted training writes none
    result = invoke("report", run, "--max-images", 2, "--examples", 1)
    assert result.exit_code == 0, result.output
    index = run / "report" / "index.html"
    box = missing_box(index)
    assert "no validation has run yet" in box and "learning rate was not recorded" in box
    assert image_sources(index)[:2] == ["loss.png", "dice.png"]  # training curves, read from train.log
    assert "From train.log, one value per epoch." in index.read_text(encoding="utf-8")
    assert "2 of the 6 validation images were predicted on the CPU with last.pth" in index.read_text(encoding="utf-8")


def test_a_run_that_held_out_no_images_says_so(demo_dir, tmp_path):
    args = {**tiny_config(demo_dir, tmp_path)["data_loader"]["args"], "validation_split": 0.0}
    run = make_run(tmp_path, demo_dir, "no-split", data_loader={"type": "SteelDataLoader", "args": args})
    write_report(run)
    assert "held out no validation images" in missing_box(run / "report" / "index.html")


def test_a_run_with_no_epoch_and_no_checkpoint_says_what_is_missing(tmp_path):
    (tmp_path / "train.log").write_text("2026-11-30 10:00:00,000 INFO    sever.experiment: run folder: x\n")
    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    box = missing_box(tmp_path / "report" / "index.html")
    assert "no epoch was logged yet" in box and "no usable checkpoint" in box
    assert image_sources(tmp_path / "report" / "index.html") == []


@pytest.mark.slow
def test_a_drawing_failure_after_training_is_a_warning(run_copy, monkeypatch, caplog):
    from sever.report import figures

    def broken(*args):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(figures, "loss_curves", broken)
    with caplog.at_level(logging.WARNING, logger="sever"):
        report_after_training(run_copy, 4)
    assert "could not write the run report (RuntimeError: no fonts)" in caplog.text
    assert f"sever report {run_copy}" in caplog.text
