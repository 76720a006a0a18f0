"""``sever label-issues STUDY``: a hand-made study whose labels were corrupted after its
out-of-fold maps were drawn from the real masks; the command lists the corrupted labels first with
their kinds, writes the CSV and the gallery, and refuses bad inputs with one line.
"""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from sever.cli.app import cli
from sever.data_loader.annotations import Annotations, read_rle_csv, write_rle_csv
from sever.data_loader.demo import make_demo_data
from sever.data_loader.rle import rle_encode
from sever.inference.evaluate import truth_batch, validation_split
from sever.inference.label_issues import read_issues_csv
from sever.inference.outputs import save_probabilities
from sever.study.folder import StudyPaths
from sever.study.folds import with_fold
from sever.study.splits import image_key, write_splits
from sever.utils.config import dump_config

HEIGHT, WIDTH = 64, 256


def corrupt(csv_path):
    """Drop, move and add one mask each in three images of ``csv_path``; ``{(image, class index): kind}``."""
    labels = read_rle_csv(csv_path, 4)
    encodings = labels.encodings.copy()
    single = [i for i in range(len(labels)) if (encodings[i] != "").sum() == 1]
    drop, move, blob = single[:3]
    planted = {}
    c = int(np.flatnonzero(encodings[drop] != "")[0])
    encodings[drop, c] = ""
    planted[(labels.image_ids[drop], c)] = "missing mask"
    c = int(np.flatnonzero(encodings[move] != "")[0])
    other = (c + 1) % 4
    encodings[move, other], encodings[move, c] = encodings[move, c], ""
    planted[(labels.image_ids[move], other)] = "wrong class"
    c = (int(np.flatnonzero(encodings[blob] != "")[0]) + 2) % 4
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[4:20, 200:240] = 1
    encodings[blob, c] = rle_encode(mask)
    planted[(labels.image_ids[blob], c)] = "spurious mask"
    write_rle_csv(csv_path, Annotations(labels.image_ids, encodings, labels.rows, labels.source), "train")
    return planted


@pytest.fixture
def corrupted_study(tmp_path):
    """A 2-fold study of demo data whose out-of-fold maps follow the real masks, then 3 labels corrupted."""
    from conftest import tiny_config

    data = make_demo_data(tmp_path / "data", n_train=24, n_test=2, height=HEIGHT, width=WIDTH, seed=5)
    config = tiny_config(data, tmp_path / "saved")
    paths = StudyPaths(tmp_path / "study")
    paths.root.mkdir()
    dump_config(with_fold(config, 2, 0), paths.config)
    images = sorted((data / "train_images").iterdir())
    write_splits(paths.splits, {image_key(path, data): i % 2 for i, path in enumerate(images)}, 2)
    paths.initialise(2)
    rng = np.random.default_rng(0)
    for fold in range(2):
        run_config = with_fold(config, 2, fold, paths.splits)
        paths.fold_dir(fold).mkdir()
        dump_config(run_config, paths.fold_dir(fold) / "config.yaml")
        names, truth = validation_split(run_config)
        paths.oof_dir(fold).mkdir()
        for path in names:
            mask = truth_batch(truth, [path.name], (HEIGHT, WIDTH))[0].numpy().astype(bool)  # (C, H, W)
            probs = np.where(mask, rng.integers(190, 256, mask.shape), rng.integers(0, 60, mask.shape))
            save_probabilities(paths.oof_dir(fold), path.name, probs.astype(np.uint8))
        paths.set_status(fold, "done")
    return paths, corrupt(data / "train.csv")


def test_label_issues_lists_the_corrupted_labels_first(corrupted_study, tmp_path):
    paths, planted = corrupted_study
    result = CliRunner().invoke(cli, ["label-issues", str(paths.root), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = read_issues_csv(tmp_path / "out" / "label_issues.csv")
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    names = {f"class {c + 1}": c for c in range(4)}
    found = {(row["image"], names[row["class"]]): row["kind"] for row in rows}
    for key, kind in planted.items():
        assert found[key].startswith(kind), (key, found.get(key))
    wrong = next(key for key, kind in planted.items() if kind == "wrong class")
    assert found[wrong] == f"wrong class (predicted class {(wrong[1] - 1) % 4 + 1})"
    suspects = list(dict.fromkeys(row["image"] for row in rows))
    assert set(suspects[:3]) == {image for image, _ in planted}  # the three corrupted images first

    page = (tmp_path / "out" / "gallery.html").read_text()
    records = json.loads(re.search(r"id='records'>(.*?)</script>", page).group(1))
    assert [r["name"] for r in records] == suspects and [r["rank"] for r in records] == list(range(len(records)))
    first = records[0]
    assert all((tmp_path / "out" / r["thumb"]).is_file() for r in records)
    assert [error[:2] for error in first["errors"]] == [
        [row["kind"].split(" (")[0], names[row["class"]]] for row in rows if row["image"] == first["name"]]
    assert "<option value='wrong class'>" in page and "<option value='rank'>" in page
    assert "<option value='poor outline'>" in page


def test_default_output_is_inside_the_study_and_max_images_caps_the_gallery(corrupted_study):
    paths, _ = corrupted_study
    result = CliRunner().invoke(cli, ["label-issues", str(paths.root), "--max-images", "2"])
    assert result.exit_code == 0, result.output
    folder = paths.root / "label_issues"
    assert (folder / "label_issues.csv").is_file()
    page = (folder / "gallery.html").read_text()
    assert len(json.loads(re.search(r"id='records'>(.*?)</script>", page).group(1))) == 2
    assert len(list((folder / "gallery").iterdir())) == 2


def _refused(args) -> str:
    result = CliRunner().invoke(cli, ["label-issues", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a SeverError, not a crash
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_bad_inputs_get_one_line(corrupted_study, tmp_path):
    paths, _ = corrupted_study
    assert "no such folder" in _refused([str(tmp_path / "nowhere")])
    assert "not a study" in _refused([str(paths.fold_dir(0))])  # a run folder, not a study
    for oof in paths.oof_dir(1).iterdir():
        oof.unlink()
    paths.oof_dir(1).rmdir()
    assert "fold 1 has no out-of-fold probabilities" in _refused([str(paths.root)])
