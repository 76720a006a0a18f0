"""The synthetic demo dataset: layout, determinism, masks and regeneration rules."""

import re

import cv2
import numpy as np
import pytest

from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.demo import MANIFEST, make_demo_data
from sever.exceptions import ConfigError, DataError

SMALL = dict(n_train=8, n_test=4, height=64, width=256)
CSV_NAMES = ("train.csv", "sample_submission.csv", "pseudo.csv", "test_labels.csv")


def image_ids(folder):
    return sorted(path.name for path in folder.iterdir())


def snapshot(root):
    """Every file below ``root`` with its modification time."""
    return {path.relative_to(root).as_posix(): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def demo(module_tmp):
    """A 40 + 12 image dataset of 64 x 256, made once for the read-only tests."""
    return make_demo_data(module_tmp("demo"), n_train=40, n_test=12, height=64, width=256)


def test_layout_is_the_kaggle_one(tmp_path):
    out = make_demo_data(tmp_path / "data", **SMALL)
    assert out == tmp_path / "data"
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [MANIFEST, "train_images", "test_images", *CSV_NAMES]
    )
    train, test = image_ids(out / "train_images"), image_ids(out / "test_images")
    assert len(train) == 8 and len(test) == 4 and not set(train) & set(test)
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", name) for name in train + test)
    image = cv2.imread(str(out / "train_images" / train[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 256) and image.dtype == np.uint8
    headers = {name: (out / name).read_text().splitlines()[0] for name in CSV_NAMES}
    assert headers == {
        "train.csv": "ImageId,ClassId,EncodedPixels",
        "sample_submission.csv": "ImageId,EncodedPixels,ClassId",
        "pseudo.csv": "ImageId_ClassId,EncodedPixels",
        "test_labels.csv": "ImageId,ClassId,EncodedPixels",
    }
    submission = read_rle_csv(out / "sample_submission.csv", 4)
    assert sorted(submission.image_ids) == test and not submission.has_defect().any()
    assert (submission.rows > 0).all()  # one row per image and class


def test_same_seed_gives_identical_files_and_another_seed_other_ids(tmp_path):
    first = make_demo_data(tmp_path / "a", **SMALL)
    second = make_demo_data(tmp_path / "b", **SMALL)
    other = make_demo_data(tmp_path / "c", seed=1, **SMALL)
    for name in CSV_NAMES:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    names = image_ids(first / "train_images")
    assert names == image_ids(second / "train_images")
    assert all((first / "train_images" / n).read_bytes() == (second / "train_images" / n).read_bytes() for n in names)
    assert not set(names) & set(image_ids(other / "train_images"))


def test_masks_are_where_the_image_shows_a_defect(demo):
    annotations = read_rle_csv(demo / "train.csv", 4, image_ids(demo / "train_images"))
    assert annotations.has_defect().any(axis=0).all()  # every class occurs
    ring_kernel = np.ones((9, 9), np.uint8)
    for position, name in enumerate(annotations.image_ids):
        image = cv2.imread(str(demo / "train_images" / name), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        masks = annotations.decode(position, image.shape)
        assert masks.sum(axis=-1).max() <= 1  # classes never overlap
        assert (masks.any(axis=(0, 1)) == annotations.has_defect()[position]).all()
        for k in np.flatnonzero(annotations.has_defect()[position]):
            inside = masks[..., k].astype(bool)
            ring = cv2.dilate(masks[..., k], ring_kernel).astype(bool) & ~inside
            contrast = abs(image[inside].mean() - image[ring].mean())
            assert contrast > 5, f"{name} class {k + 1}: mask mean differs from its surroundings by {contrast:.1f}"


def test_defect_free_fraction_and_two_class_images(tmp_path):
    out = make_demo_data(tmp_path, n_train=200, n_test=1, height=32, width=64)
    counts = read_rle_csv(out / "train.csv", 4, image_ids(out / "train_images")).n_defects()
    assert 0.2 <= (counts == 0).mean() <= 0.4
    assert (counts == 2).any() and counts.max() == 2


def test_pseudo_labels_are_mildly_perturbed_test_masks(demo):
    ids = image_ids(demo / "test_images")
    truth = read_rle_csv(demo / "test_labels.csv", 4, ids)
    pseudo = read_rle_csv(demo / "pseudo.csv", 4, ids)
    assert pseudo.image_ids == truth.image_ids and (pseudo.rows > 0).all()
    assert not (pseudo.has_defect() & ~truth.has_defect()).any()
    for position, k in np.argwhere(pseudo.has_defect()):
        label = pseudo.decode(position, (64, 256))[..., k].astype(bool)
        true = truth.decode(position, (64, 256))[..., k].astype(bool)
        assert (label & true).sum() / (label | true).sum() > 0.3


def test_complete_dataset_is_not_regenerated_unless_asked(tmp_path):
    out = make_demo_data(tmp_path, **SMALL)
    before = snapshot(out)
    assert make_demo_data(tmp_path, **SMALL) == out
    assert snapshot(out) == before
    make_demo_data(tmp_path, overwrite=True, **SMALL)
    after = snapshot(out)
    assert after.keys() == before.keys() and after["train.csv"] != before["train.csv"]


def test_other_settings_need_overwrite_which_replaces_only_own_files(tmp_path):
    make_demo_data(tmp_path, **SMALL)
    old_images = image_ids(tmp_path / "train_images")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="made with .*pass overwrite=True"):
        make_demo_data(tmp_path, seed=7, **SMALL)
    make_demo_data(tmp_path, seed=7, overwrite=True, **SMALL)
    new_images = image_ids(tmp_path / "train_images")
    assert len(new_images) == 8 and not set(new_images) & set(old_images)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_incomplete_dataset_is_completed(tmp_path):
    make_demo_data(tmp_path, **SMALL)
    victim = tmp_path / "train_images" / image_ids(tmp_path / "train_images")[3]
    victim.unlink()
    make_demo_data(tmp_path, **SMALL)
    assert victim.is_file()


@pytest.mark.parametrize("user_file", ["train.csv", "train_images/mine.jpg"])
def test_files_not_written_here_are_never_touched(tmp_path, user_file):
    (tmp_path / user_file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / user_file).write_text("user data")
    for overwrite in (False, True):
        with pytest.raises(DataError, match=f"did not write \\(e.g. {user_file}\\)"):
            make_demo_data(tmp_path, overwrite=overwrite, **SMALL)
    assert (tmp_path / user_file).read_text() == "user data"


@pytest.mark.parametrize(
    "settings, key",
    [(dict(classes=5), "classes"), (dict(classes=0), "classes"), (dict(height=16), "height"),
     (dict(n_train=0), "n_train"), (dict(seed=-1), "seed"), (dict(width=64.0), "width")],
)
def test_bad_settings_name_the_setting(tmp_path, settings, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        make_demo_data(tmp_path, **{**SMALL, **settings})
    assert not any(tmp_path.iterdir())


def test_fewer_classes_use_the_first_defect_kinds(tmp_path):
    out = make_demo_data(tmp_path, n_train=30, n_test=2, height=32, width=128, classes=2)
    annotations = read_rle_csv(out / "train.csv", 2, image_ids(out / "train_images"))
    assert annotations.n_classes == 2 and annotations.has_defect().any(axis=0).all()
