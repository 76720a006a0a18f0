"""Detection data: mosaic, the dataset's items and augmented boxes, sizes that must match, the NEU-DET layout."""

import numpy as np
import pytest
import torch
from voc_data import CLASSES, make_voc, voc_dir, voc_xml  # noqa: F401 (fixture)

from sever.data_loader.voc import read_voc_folder
from sever.detection.data import (
    DetectionDataset,
    DetectionTransforms,
    VOCDataLoader,
    mosaic,
)
from sever.exceptions import DataError


def test_mosaic_places_each_image_at_the_centre_and_clips_its_boxes():
    images = [np.full((40, 60), 10 * (i + 1), np.uint8) for i in range(4)]
    boxes = [np.array([[50, 30, 60, 40], [0, 0, 5, 5]], np.float32),  # top-left tile: near corner / far corner
             np.array([[0, 25, 20, 40], [0, 0, 20, 10]], np.float32),  # top-right: at (30, -20)
             np.array([[0, 5, 10, 15]], np.float32),   # bottom-left: straddles the centre column
             np.zeros((0, 4), np.float32)]
    labels = [np.array([0, 1]), np.array([1, 0]), np.array([0]), np.zeros(0, np.int64)]
    canvas, out_boxes, out_labels = mosaic(images, boxes, labels, centre=(0.5, 0.5))  # centre (30, 20)
    assert canvas.shape == (40, 60)
    assert (canvas[:20, :30] == 10).all() and (canvas[:20, 30:] == 20).all()
    assert (canvas[20:, :30] == 30).all() and (canvas[20:, 30:] == 40).all()
    # top-left image is placed at (-30, -20): its box (50, 30, 60, 40) -> (20, 10, 30, 20); the far one is cut off.
    # top-right at (30, -20): (0, 25, 20, 40) -> (30, 5, 50, 20); (0, 0, 20, 10) lands above the canvas.
    # bottom-left image at (-30, 20): its box (0, 5, 10, 15) is outside its quadrant entirely.
    assert out_boxes.tolist() == [[20, 10, 30, 20], [30, 5, 50, 20]]
    assert out_labels.tolist() == [0, 1]


def test_mosaic_drops_boxes_mostly_cut_away_and_keeps_smaller_images_grey():
    images = [np.full((40, 40), 200, np.uint8), np.full((10, 10), 50, np.uint8)] + [np.full((40, 40), 90, np.uint8)] * 2
    boxes = [np.array([[5, 5, 25, 25], [15, 15, 35, 35], [22, 22, 40, 40]], np.float32), np.zeros((0, 4), np.float32),
             np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)]
    labels = [np.array([0, 0, 1]), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)]
    canvas, out_boxes, out_labels = mosaic(images, boxes, labels, centre=(0.25, 0.25))  # centre (10, 10)
    # top-left image at (-30, -30): box 1 is cut away; box 2 -> (-15, -15, 5, 5) keeps 25/400 of its area,
    # under a quarter: dropped; box 3 -> (-8, -8, 10, 10) keeps 100/324: clipped to (0, 0, 10, 10).
    assert out_boxes.tolist() == [[0, 0, 10, 10]] and out_labels.tolist() == [1]
    assert (canvas[:10, 10:20] == 50).all() and (canvas[:10, 20:] == 114).all()


def test_dataset_items_and_augmented_boxes_follow_the_defects(voc_dir):
    paths, boxes = read_voc_folder(voc_dir / "images", voc_dir / "annotations", CLASSES)
    dataset = DetectionDataset(paths, boxes, DetectionTransforms(train_aug=True).build(train=True))
    for seed in range(6):
        image, target = dataset[(1, seed)]
        assert image.shape == (3, 72, 72) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        assert torch.equal(image[0], image[2])
        box = target["boxes"][0].round().int().tolist()
        assert target["labels"].tolist() == [0, 1]
        assert image[0, box[1]:box[3], box[0]:box[2]].mean() > 0.5  # the bright square is still in its box
    first, second = dataset[(1, 3)], dataset[(1, 3)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])


def test_annotated_size_must_match_the_image(voc_dir, tmp_path):
    (tmp_path / "a.xml").write_text(voc_xml("a", 99, 64, [("crazing", 1, 1, 5, 5)]))
    from sever.data_loader.voc import parse_voc

    dataset = DetectionDataset([voc_dir / "images" / "img0.png"], [parse_voc(tmp_path / "a.xml", CLASSES)],
                               DetectionTransforms().build(train=False))
    with pytest.raises(DataError, match=r"a.xml: states a 99x64 \(WxH\) image but .*img0.png is 80x64"):
        dataset[0]


def test_neu_det_loader_reads_the_real_layout(shared_data):
    names = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    data = VOCDataLoader(str(shared_data / "neu-det"), batch_size=2, validation_split=0.1, num_workers=0,
                         classes=6, class_names=names, transforms=DetectionTransforms(), seed=0)
    assert len(data.train_dataset) + len(data.valid_dataset) == 1620 and len(data.valid_dataset) == 162
    images, targets = next(iter(data.valid_loader))
    assert images[0].shape == (3, 200, 200) and targets[0]["boxes"].shape[1] == 4
