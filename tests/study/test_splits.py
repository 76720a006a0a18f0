"""splits.json: the saved fold of every image, its validation, new images, and the loaders that read it."""

import json
import shutil

import numpy as np
import pytest

from sever.data_loader.data_loaders import fold_assignment, read_split
from sever.exceptions import DataError
from sever.study.splits import assign_new, fold_of_each, image_key, read_splits, write_splits


def test_a_written_split_reads_back_sorted_and_readable(tmp_path):
    path = write_splits(tmp_path / "splits.json", {"b.jpg": 1, "a.jpg": 0, "c.jpg": 1}, 2)
    assert read_splits(path) == ({"a.jpg": 0, "b.jpg": 1, "c.jpg": 1}, 2)
    assert list(json.loads(path.read_text())["images"]) == ["a.jpg", "b.jpg", "c.jpg"]


@pytest.mark.parametrize("text, message", [
    ('{"folds": 2, "images": {"a.jpg": 0, "b.jpg": 1, "a.jpg": 1}}', "image a.jpg is named twice"),
    ('{"folds": 2, "images": {"a.jpg": 0, "b.jpg": 2}}', "image b.jpg: fold must be one of 0..1, got 2"),
    ('{"folds": 2, "images": {"a.jpg": 0, "b.jpg": "one"}}', "image b.jpg: fold must be one of 0..1, got 'one'"),
    ('{"folds": 3, "images": {"a.jpg": 0, "b.jpg": 2}}', r"fold\(s\) 1 of 0..2 have no image"),
    ('{"folds": 1, "images": {"a.jpg": 0}}', "folds: an integer >= 2, got 1"),
    ('{"folds": 2, "images": {"a.jpg": 0, ', "not JSON"),
    ('{"folds": 2}', "not a split file"),
])
def test_a_bad_hand_edit_is_refused_naming_the_file_and_the_image(tmp_path, text, message):
    path = tmp_path / "splits.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_splits(path)
    assert str(path) in str(error.value)


def test_the_images_of_the_data_and_of_the_split_must_match(tmp_path):
    path = write_splits(tmp_path / "splits.json", {"a.jpg": 0, "b.jpg": 1, "gone.jpg": 1}, 2)
    with pytest.raises(DataError, match=r"1 image\(s\) not in the data folder: gone.jpg"):
        fold_of_each(path, ["a.jpg", "b.jpg"])
    path = write_splits(tmp_path / "splits.json", {"a.jpg": 0, "b.jpg": 1}, 2)
    added = [f"new{i}.jpg" for i in range(7)]
    with pytest.raises(DataError, match=r"7 image\(s\) of the data folder have no fold .*: new0.jpg, new1.jpg, "
                                        r"new2.jpg, new3.jpg, new4.jpg, \.\.\.; sever train -r .* "
                                        r"--assign-new-images gives each a fold"):
        fold_of_each(path, ["b.jpg", "a.jpg", *added])
    with pytest.raises(DataError, match="a split into 2 folds, but the config has data_loader.args.folds: 3"):
        fold_of_each(path, ["a.jpg", "b.jpg"], folds=3)
    assert fold_of_each(path, ["b.jpg", "a.jpg"], folds=2).tolist() == [1, 0]  # in the data's order


def test_new_images_go_to_the_smallest_fold_and_the_others_never_move():
    saved = {"a": 0, "b": 0, "c": 1, "d": 2}
    assigned = assign_new(saved, ["z", "y", "x"], 3)
    assert {key: assigned[key] for key in saved} == saved
    # sorted x, y, z: x to fold 1 (1 image, the lowest of the smallest), y to fold 2, z to fold 0, 1 or 2 -> 0
    assert (assigned["x"], assigned["y"], assigned["z"]) == (1, 2, 0)
    assert assign_new(saved, ["z", "y", "x"], 3) == assigned


def add_image(data_dir, copy_of, name):
    """Add image ``name`` to a Kaggle-layout folder: a copy of ``copy_of`` with its label rows."""
    shutil.copy(data_dir / "train_images" / copy_of, data_dir / "train_images" / name)
    rows = [line for line in (data_dir / "train.csv").read_text().splitlines() if line.startswith(copy_of)]
    with open(data_dir / "train.csv", "a") as csv:
        csv.write("".join(f"{row.replace(copy_of, name)}\n" for row in rows))


def test_the_loaders_read_the_saved_folds_where_the_seed_would_reshuffle(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    before = read_split(data, folds=3, fold=0, classes=4, seed=7)
    keys = [image_key(path, data) for path in before.paths]
    saved = fold_assignment(before.annotations.has_defect(), 3, seed=7)
    split_file = write_splits(tmp_path / "splits.json", dict(zip(keys, saved.tolist())), 3)
    defective = next(key for key, fold in zip(keys, saved) if before.annotations.has_defect()[keys.index(key)].any())
    add_image(data, defective.split("/")[-1], "added0.jpg")
    after = read_split(data, folds=3, fold=0, classes=4, seed=7)
    new_keys = [image_key(path, data) for path in after.paths]
    derived = dict(zip(new_keys, fold_assignment(after.annotations.has_defect(), 3, seed=7).tolist()))
    assert any(derived[key] != fold for key, fold in zip(keys, saved)), "the seed's split moved no image"
    with pytest.raises(DataError, match="added0.jpg; sever train -r"):
        read_split(data, folds=3, fold=0, split_file=str(split_file), classes=4, seed=7)
    assigned, _ = read_splits(split_file)
    write_splits(split_file, assign_new(assigned, ["train_images/added0.jpg"], 3), 3)
    for fold in range(3):
        split = read_split(data, folds=3, fold=fold, split_file=str(split_file), classes=4, seed=7)
        valid = {image_key(split.paths[i], data) for i in split.valid_indices}
        assert valid - {"train_images/added0.jpg"} == {key for key, f in zip(keys, saved) if f == fold}
        assert len(split.train_indices) + len(split.valid_indices) == len(keys) + 1
    assert np.isin(["train_images/added0.jpg"], new_keys).all()
