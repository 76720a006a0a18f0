"""The dataset fingerprint ``sever plan`` works from: sizes, grey statistics, classes and the shapes of their
defects, measured on datasets whose defects are drawn where and how large the test says; refusals of bad input."""

import json
import shutil

import numpy as np
import pytest
from mask_folders import write_dataset
from plan_datasets import squares_dataset

from sever.data_loader.annotations import write_rle_csv
from sever.data_loader.demo import make_demo_data
from sever.data_loader.mask_folder import read_mask_folder
from sever.exceptions import DataError
from sever.planning.fingerprint import Layout, fingerprint


def test_fingerprint_measures_sizes_grey_classes_and_defects(tmp_path):
    fp = fingerprint(squares_dataset(tmp_path / "sq"))
    assert fp.layout["format"] == "mask_folder"  # detected: no CSV, a mask folder
    assert fp.images == 8 and fp.heights == [48, 48, 48] and fp.widths == [80, 80, 80]
    greys = (60 + 10 * np.arange(8)) / 255
    assert fp.grey_mean == pytest.approx(greys.mean()) and fp.grey_std == pytest.approx(greys.std())
    first, second = fp.classes
    assert (first.images, second.images) == (4, 1)
    assert first.area == [120.0, 120.0, 120.0] and first.extent == [10, 12]
    assert second.area == [32.0] * 3 and second.component == [16.0] * 3 and second.extent == [4, 4]
    assert fp.empty_images == pytest.approx(3 / 8)
    assert fp.empty_pairs == pytest.approx(11 / 16)
    fp.save(tmp_path / "fingerprint.json")
    assert json.loads((tmp_path / "fingerprint.json").read_text())["classes"][1]["images"] == 1


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(DataError, match="no images"):
        fingerprint(tmp_path)


def test_images_without_labels_are_refused(tmp_path):
    data = squares_dataset(tmp_path / "sq")
    shutil.rmtree(data / "train_masks")
    with pytest.raises(DataError, match="no labels"):
        fingerprint(data)
    (data / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(DataError, match="no labels: not one defect"):
        fingerprint(data)


def test_labels_for_missing_images_are_refused(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_train=8, n_test=2, height=64, width=256, seed=6)
    labelled = (data / "train.csv").read_text().splitlines()[1].split(",")[0]
    (data / "train_images" / labelled).unlink()
    with pytest.raises(DataError, match=f"no image in .*{labelled}"):
        fingerprint(data, Layout())


# ---------------------------------------------------------------- defects of known shapes

NAMES = ["a_tall", "b_wide", "c_none"]  # per-class folders, in the order the classes are read (sorted)
SIZE = (64, 96)  # (height, width) of every image


def tall_and_wide_masks() -> list[np.ndarray]:
    """Six (H, W, 3) masks: class 0 a 24x3 (tall) bar in images 0-2, class 1 a 3x24 (wide) bar in images 1
    and 3 (two of them in image 3), class 2 nowhere; images 4 and 5 defect-free."""
    masks = [np.zeros((*SIZE, 3), np.uint8) for _ in range(6)]
    for i in (0, 1, 2):
        masks[i][10:34, 5 + 10 * i:8 + 10 * i, 0] = 1
    masks[1][50:53, 40:64, 1] = 1
    masks[3][5:8, 10:34, 1] = 1
    masks[3][40:43, 60:84, 1] = 1
    return masks


@pytest.fixture
def shapes_dir(tmp_path):
    return write_dataset(tmp_path / "shapes", tall_and_wide_masks(), "per-class", names=NAMES)


def test_each_class_has_the_extent_height_then_width_of_its_defects(shapes_dir):
    fp = fingerprint(shapes_dir, Layout(images="images", masks="masks"))
    assert fp.layout["format"] == "mask_folder" and fp.class_names == NAMES
    assert fp.images == 6 and fp.heights == [SIZE[0]] * 3 and fp.widths == [SIZE[1]] * 3
    tall, wide, none = fp.classes
    assert tall.extent == [24, 3] and wide.extent == [3, 24] and none.extent == [0, 0]
    assert tall.component == [72.0] * 3 and wide.component == [72.0] * 3
    assert tall.area == [72.0] * 3
    assert wide.area == pytest.approx(np.percentile([72.0, 144.0], [5, 50, 95]).tolist())  # image 3 holds two bars
    assert none.area == [0.0] * 3 and none.images == 0
    assert [c.images for c in fp.classes] == [3, 2, 0]
    assert [c.frequency for c in fp.classes] == pytest.approx([3 / 6, 2 / 6, 0])
    assert fp.empty_images == pytest.approx(2 / 6)  # images 4 and 5
    assert fp.empty_pairs == pytest.approx(13 / 18)  # 5 of the 18 image-class pairs hold a defect
    greys = (90 + np.arange(6)) / 255  # write_dataset's constant grey levels
    assert fp.grey_mean == pytest.approx(greys.mean(), abs=1e-3)
    assert fp.grey_std == pytest.approx(greys.std(), abs=1e-3)
    assert any(line.startswith("a_tall") and "24x3" in line for line in fp.table())
    assert any(line.startswith("b_wide") and "3x24" in line for line in fp.table())


def test_a_kaggle_csv_of_the_same_defects_gives_the_same_measures(shapes_dir, tmp_path):
    annotations, paths = read_mask_folder(shapes_dir / "images", shapes_dir / "masks", 3, NAMES)
    kaggle = tmp_path / "kaggle"
    (kaggle / "train_images").mkdir(parents=True)
    for path in paths:
        shutil.copy(path, kaggle / "train_images" / path.name)
    write_rle_csv(kaggle / "train.csv", annotations, "train")
    fp = fingerprint(kaggle)
    assert fp.layout["format"] == "kaggle"
    assert fp.class_names == ["class1", "class2"]  # the highest ClassId used: the empty third class is not seen
    assert [c.extent for c in fp.classes] == [[24, 3], [3, 24]]
    assert [c.images for c in fp.classes] == [3, 2]
    assert fp.empty_images == pytest.approx(2 / 6) and fp.empty_pairs == pytest.approx(7 / 12)


def test_the_saved_fingerprint_holds_every_measure(shapes_dir, tmp_path):
    fp = fingerprint(shapes_dir, Layout(images="images", masks="masks"))
    saved = json.loads(fp.save(tmp_path / "fingerprint.json").read_text())
    assert saved["layout"] == {"format": "mask_folder", "images": "images", "csv": "train.csv", "masks": "masks"}
    assert [c["name"] for c in saved["classes"]] == NAMES
    assert [c["extent"] for c in saved["classes"]] == [[24, 3], [3, 24], [0, 0]]
    assert (saved["images"], saved["heights"], saved["empty_pairs"]) == (6, [64, 64, 64], fp.empty_pairs)
