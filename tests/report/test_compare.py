"""sever report over several runs (a comparison page) and over a study folder."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from inference_runs import invoke
from report_runs import trained  # noqa: F401 (fixture)

from sever.report.compare import config_differences, write_comparison, write_study_report
from sever.study.folder import StudyPaths


def copy_run(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report"))
    config = yaml.safe_load((target / "config.yaml").read_text())
    for dotted, value in config_changes.items():
        block = config
        *parents, last = dotted.split(".")
        for key in parents:
            block = block[key]
        block[last] = value
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


def test_config_differences_lists_only_keys_that_differ():
    first = {"seed": 1, "optimizer": {"lr": 1e-3, "type": "RAdam"}, "metrics": ["Dice"]}
    second = {"seed": 1, "optimizer": {"lr": 3e-3, "type": "RAdam"}, "metrics": ["Dice", "IoU"], "extra": True}
    assert config_differences([first, second]) == {"extra": [None, True], "metrics": [["Dice"], ["Dice", "IoU"]],
                                                   "optimizer.lr": [1e-3, 3e-3]}


@pytest.mark.slow
def test_two_runs_on_one_page(trained, tmp_path):  # noqa: F811 (fixture)
    first = copy_run(trained, tmp_path / "a")
    second = copy_run(trained, tmp_path / "b", **{"optimizer.encoder.lr": 0.01, "seed": 11})
    result = invoke("report", first, second, "--out", tmp_path / "page")
    assert result.exit_code == 0, result.output
    index = tmp_path / "page" / "index.html"
    text = index.read_text(encoding="utf-8")
    assert "2 runs compared" in text and "http" not in text
    differences = text.split("<h2>Config differences</h2>")[1].split("<h2>")[0]
    assert "<td>optimizer.encoder.lr</td><td>0.001</td><td>0.01</td>" in differences
    assert "<td>seed</td><td>7</td><td>11</td>" in differences and "classes" not in differences
    panels = json.loads((tmp_path / "page" / "curves.json").read_text())["axes"]
    assert [panel["title"].split(" (")[0] for panel in panels] == ["loss", "dice mean"]
    for panel in panels:
        by_label = {line["label"]: line for line in panel["lines"]}
        assert set(by_label) == {"train a", "val a", "train b", "val b"}
        assert by_label["train a"]["color"] == by_label["val a"]["color"] != by_label["val b"]["color"]
        assert by_label["train a"]["linestyle"] == "--" and by_label["val a"]["linestyle"] == "-"
    scores = text.split("<h2>Scores</h2>")[1]
    assert re.search(r"<td>a</td><td>2</td><td>[0-9.]+</td><td>[12]</td><td>[0-9.]+</td><td>sever tune on the "
                     r"validation split of [^<]*/checkpoints/model_best.pth: mean Dice", scores)


@pytest.fixture
def study(trained, tmp_path) -> Path:  # noqa: F811 (fixture)
    """A study of two finished folds (copies of the trained run), scored, tuned and with a budget ledger."""
    root = tmp_path / "study"
    root.mkdir()
    shutil.copy(trained / "config.yaml", root / "config.yaml")
    paths = StudyPaths(root)
    paths.initialise(2)
    for fold in (0, 1):
        copy_run(trained, root / f"fold{fold}")
        paths.set_status(fold, "done")
    paths.record(score=0.6123, class_scores=[0.5, 0.6, 0.7, 0.6492], default_score=0.4)
    (root / "postprocess.yml").write_text("# tuned out-of-fold: mean Dice 0.6123\nthreshold: [0.3, 0.4, 0.5, 0.6]\n"
                                          "min_pixels: [10, 20, 30, 40]\n")
    paths.set_budget(100.0, slots=1)
    paths.charge("round0/fold0", 41.5)
    paths.charge("round0/fold1", 38.5)
    paths.note_overhead("round0/fold0", 5.0)
    return root


@pytest.mark.slow
def test_a_study_gets_its_own_report(study):
    result = invoke("report", study)
    assert result.exit_code == 0, result.output
    text = (study / "report" / "index.html").read_text(encoding="utf-8")
    assert "not a run folder" not in text and f"Study {study}" in text
    assert "<td>0</td><td>fold0 done, fold1 done</td><td>0.6123</td><td>0.4000</td><td>-</td><td>yes</td>" in text
    tuned = text.split("tuned post-processing</h2>")[1].split("<h2>")[0]
    assert "tuned out-of-fold: mean Dice 0.6123" in tuned
    assert "<td>3 scratches</td><td>0.5</td><td>30</td><td>0.7000</td>" in tuned
    ledger = text.split("<h2>Time budget</h2>")[1]
    assert "<td>round0/fold0</td><td>41.5000</td>" in ledger and "<td>total</td><td>80.0000</td>" in ledger
    assert "80 spent (80%)" in ledger
    panels = json.loads((study / "report" / "round0_folds.json").read_text())["axes"]
    assert {line["label"] for line in panels[0]["lines"]} == {"train fold0", "val fold0", "train fold1", "val fold1"}


@pytest.mark.slow
def test_a_study_without_tuning_or_budget_says_so(study):
    (study / "postprocess.yml").unlink()
    data = yaml.safe_load((study / "study.yml").read_text())
    del data["budget"]
    (study / "study.yml").write_text(yaml.safe_dump(data))
    report = write_study_report(study)
    assert any("no tuned post-processing" in line for line in report.missing)
    assert any("time budget: the study had none" in line for line in report.missing)


def test_a_folder_that_is_neither_run_nor_study_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for args in ((tmp_path,), (tmp_path, tmp_path)):
        result = invoke("report", *args)
        assert result.exit_code == 1
        assert "neither a sever run folder" in result.output and "nor a study folder" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_broken_study_file_is_a_one_line_error(tmp_path):
    (tmp_path / "study.yml").write_text("folds: [\n")
    result = invoke("report", tmp_path)
    assert result.exit_code == 1 and "cannot read the study file" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_comparison_of_runs_needs_runs(trained, tmp_path):  # noqa: F811 (fixture)
    with pytest.raises(Exception, match="neither a sever run folder"):
        write_comparison([trained, tmp_path], tmp_path / "page")


@pytest.mark.slow
def test_the_report_at_the_end_of_a_study(study, trained, caplog):  # noqa: F811 (fixture)
    from sever.report.compare import report_after_study

    assert report_after_study(study) == study / "report" / "index.html"
    assert report_after_study(trained) is None  # a single run has its own report already
    (study / "study.yml").write_text("folds: 2\nruns: [{fold: 0}]\n")  # a run entry without status: damaged
    assert report_after_study(study) is None
    assert "could not write the study report" in caplog.text and f"sever report {study}" in caplog.text


@pytest.mark.slow
def test_a_study_with_a_pending_pseudo_label_round(study):
    data = yaml.safe_load((study / "study.yml").read_text())
    data["rounds"] = [{"round": 1, "runs": [{"fold": k, "status": "pending", "run": f"round1/fold{k}"} for k in (0, 1)]}]
    (study / "study.yml").write_text(yaml.safe_dump(data))
    report = write_study_report(study)
    text = report.index.read_text(encoding="utf-8")
    assert "<td>1</td><td>fold0 pending, fold1 pending</td><td>-</td><td>-</td><td>-</td><td></td>" in text
    assert "<h2>Round 1: folds side by side</h2>" in text
    assert any(line.startswith("round 1: no tuned post-processing") for line in report.missing)
