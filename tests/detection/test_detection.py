"""Detection: mosaic, the dataset, COCO mAP on hand-made boxes, masks as boxes, training, prediction."""

import urllib.error

import cv2
import numpy as np
import pytest
import torch

from sever import experiment
from sever.detection.data import DetectionDataset, DetectionTransforms, VOCDataLoader, mosaic
from sever.detection.from_masks import evaluate_segmentation_as_detector, masks_to_boxes
from sever.detection.metric import MeanAP, map_table
from sever.detection.predict import evaluate_detector, predict_boxes, predict_to_csv
from sever.data_loader.rle import rle_encode
from sever.data_loader.voc import read_voc_folder
from sever.exceptions import CheckpointError, ConfigError, DataError
from sever.model.model import build_model
from sever.utils.checkpoint import load_checkpoint
from inference_runs import invoke
from voc_data import CLASSES, make_voc, voc_xml

TINY_DETECTOR = {"backbone": "mobilenet_v3_large_320_fpn", "image_size": 64, "detector_args": {
    "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "rpn_batch_size_per_image": 64}}


def detection_config(data_dir, save_dir, **trainer):
    return {
        "name": "tiny-det", "save_dir": str(save_dir), "seed": 3, "device": "cpu", "task": "detection",
        "classes": 2, "class_names": CLASSES,
        "arch": {"type": "FasterRCNN", "args": TINY_DETECTOR},
        "data_loader": {"type": "VOCDataLoader", "args": {"data_dir": str(data_dir), "batch_size": 2,
                                                           "validation_split": 2, "num_workers": 0}},
        "augmentation": {"type": "DetectionTransforms", "args": {"train_aug": True, "mosaic": 0.5}},
        "loss": "DetectionLoss",
        "optimizer": {"type": "SGD", "args": {"lr": 0.01, "momentum": 0.9}},
        "trainer": {"epochs": 2, "monitor": "max val_map", "tensorboard": False, "max_steps_per_epoch": 1,
                    **trainer},
    }


@pytest.fixture(scope="module")
def voc_dir(module_tmp):
    root = module_tmp("voc")
    make_voc(root, n=6)
    return root


# ---------------------------------------------------------------- mosaic and the dataset


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


# ---------------------------------------------------------------- COCO metrics with known answers


def box(*xyxy):
    return torch.tensor([xyxy], dtype=torch.float32)


def coco(detections, targets):
    metric = MeanAP()
    metric.update(detections, targets)
    return metric.compute()


def test_map_known_answers():
    truth = [{"boxes": box(10, 10, 60, 60), "labels": torch.tensor([0])}]
    exact = [{"boxes": box(10, 10, 60, 60), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    assert coco(exact, truth)["map"] == pytest.approx(1.0)
    # IoU 50*31/50/50 = 0.62: a hit at IoU 0.50, 0.55 and 0.60 of the ten thresholds.
    shifted = [{"boxes": box(10, 10, 60, 41), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    results = coco(shifted, truth)
    assert (results["map"], results["map_50"], results["map_75"]) == pytest.approx((0.3, 1.0, 0.0))
    # A false positive ranked above the hit: precision 1/2 at recall 1.
    ranked = [{"boxes": torch.cat([box(100, 100, 120, 120), box(10, 10, 60, 60)]),
               "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    assert coco(ranked, [{"boxes": box(10, 10, 60, 60), "labels": torch.tensor([0])}])["map_50"] == pytest.approx(0.5)


def test_per_class_table_and_recall_limits():
    truth = [{"boxes": torch.cat([box(0, 0, 20, 20), box(50, 50, 90, 90)]), "labels": torch.tensor([0, 1])},
             {"boxes": box(5, 5, 25, 25), "labels": torch.tensor([0])}]
    found = [{"boxes": box(0, 0, 20, 20), "scores": torch.tensor([0.8]), "labels": torch.tensor([0])},
             {"boxes": box(5, 5, 25, 25), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}]
    results = coco(found, truth)
    assert (results["ap_0"], results["ar_0"], results["ap_1"], results["ar_1"]) == pytest.approx((1, 1, 0, 0))
    assert results["map"] == pytest.approx(0.5) and results["mar_100"] == pytest.approx(0.5)
    assert results["map_large"] == -1  # no box is larger than 96 x 96
    table = map_table(results, ["crazing", "patches"])
    assert "Average Precision (AP) @[" not in table  # pycocotools' exact wording is not copied ...
    assert "Average Precision @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500" in table
    assert "| 1   | crazing              |   1.000 |   1.000 |" in table
    assert "| Avg |                      |   0.500 |   0.500 |" in table


def test_metric_before_any_batch_and_mismatched_lists():
    metric = MeanAP()
    assert metric.empty
    with pytest.raises(RuntimeError):
        metric.compute()
    with pytest.raises(ValueError, match="2 detections for 1 targets"):
        metric.update([{}, {}], [{}])


# ---------------------------------------------------------------- masks as boxes


def test_masks_to_boxes_scores_components_by_mean_probability():
    probabilities = np.zeros((2, 20, 30), np.float32)
    probabilities[0, 2:5, 3:9] = 0.8       # 3 x 6 component
    probabilities[0, 4, 8] = 1.0           # inside it: mean rises
    probabilities[0, 10:12, 20:21] = 0.6   # 2-pixel component
    probabilities[1, 15:20, 25:30] = 0.9
    probabilities[1, 0, 0] = 0.4           # below the threshold
    boxes, labels, scores = masks_to_boxes(probabilities, threshold=0.5)
    assert boxes.tolist() == [[3, 2, 9, 5], [20, 10, 21, 12], [25, 15, 30, 20]]
    assert labels.tolist() == [0, 0, 1]
    assert scores == pytest.approx([(17 * 0.8 + 1.0) / 18, 0.6, 0.9])
    boxes, labels, _ = masks_to_boxes(probabilities, threshold=0.5, min_pixels=3)
    assert labels.tolist() == [0, 1]
    assert masks_to_boxes(np.zeros((3, 4, 4)))[0].shape == (0, 4)


def constant_segmenter(config, path, class_logits):
    """A segmentation checkpoint whose network outputs ``class_logits`` at every pixel of any image."""
    model = build_model(config["arch"], len(class_logits))
    head = model.state_dict()
    weight, bias = [key for key in head if key.endswith((".weight", ".bias"))][-2:]
    head[weight].zero_()
    head[bias].copy_(torch.tensor(class_logits))
    torch.save({"state_dict": head, "config": config, "epoch": 0}, path)
    return path


def test_segmentation_checkpoint_evaluated_as_a_detector(make_config, tmp_path):
    config = experiment.prepare_config(make_config())
    # class 1 everywhere, the others nowhere: one whole-image box of class 1 per image, score 1
    checkpoint = constant_segmenter(config, tmp_path / "seg.pth", [20.0, -20.0, -20.0, -20.0])
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.full((64, 256), 100, np.uint8))
    whole, square = np.ones((64, 256), np.uint8), np.zeros((64, 256), np.uint8)
    square[10:20, 30:40] = 1
    (tmp_path / "truth.csv").write_text("ImageId,ClassId,EncodedPixels\n"
                                        f"a.png,1,{rle_encode(whole)}\nb.png,1,{rle_encode(whole)}\n"
                                        f"b.png,2,{rle_encode(square)}\n")
    results = evaluate_segmentation_as_detector(checkpoint, images, csv=tmp_path / "truth.csv")
    # class 1: both whole-image boxes found exactly; class 2: its one box missed; classes 3-4: no truth
    assert (results["ap_0"], results["ar_0"], results["ap_1"], results["ar_1"]) == pytest.approx((1, 1, 0, 0))
    assert (results["map"], results["map_50"], results["map_75"], results["mar_100"]) == pytest.approx(
        (0.5, 0.5, 0.5, 0.5))
    assert sorted(key for key in results if key.startswith("ap_")) == ["ap_0", "ap_1"]  # classes seen
    with pytest.raises(ConfigError, match="exactly one ground truth"):
        evaluate_segmentation_as_detector(checkpoint, images)
    with pytest.raises(CheckpointError, match="not a detector"):
        next(predict_boxes([checkpoint], images))
    # The same through the command line, printing the mAP table.
    result = invoke("evaluate", "-m", checkpoint, "--boxes", "--images", images,
                    "--truth", tmp_path / "truth.csv", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "= 0.500" in result.output and "AP / AR per class" in result.output


# ---------------------------------------------------------------- the model, training, prediction


def test_config_errors(voc_dir, tmp_path, monkeypatch):
    config = detection_config(voc_dir, tmp_path)
    with pytest.raises(ConfigError, match="arch.type: task detection needs FasterRCNN, got FPN"):
        experiment.prepare_config({**config, "arch": {"type": "FPN"}})
    with pytest.raises(ConfigError, match="loss.type: task segmentation needs anything but DetectionLoss"):
        experiment.prepare_config({**config, "task": "segmentation", "arch": {"type": "FPN"}, "augmentation": "LightTransforms",
                             "data_loader": {"type": "SteelDataLoader", "args": {"data_dir": "x"}}})
    with pytest.raises(ConfigError, match="class_names: task detection needs the class names"):
        experiment.build_experiment(experiment.prepare_config({**config, "class_names": None}))
    with pytest.raises(ConfigError, match=r"detector_args.min_size: set by sever \(image_size\)"):
        build_model({"type": "FasterRCNN", "args": {"detector_args": {"min_size": 3}}}, 2)
    with pytest.raises(ConfigError, match="unknown backbone 'resnet50'. Did you mean 'resnet50_fpn'"):
        build_model({"type": "FasterRCNN", "args": {"backbone": "resnet50"}}, 2)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match=r"pretrained: the coco weights .* could not be loaded .*download https://"):
        build_model({"type": "FasterRCNN", "args": {**TINY_DETECTOR, "pretrained": "coco"}}, 2)


@pytest.mark.slow
def test_training_steps_checkpoints_resume_and_prediction(voc_dir, tmp_path):
    run = experiment.train(detection_config(voc_dir, tmp_path))
    finished = load_checkpoint(run.last)
    log = run.log_file.read_text()
    assert "val_map " in log and "val_ap_0" in log and "train_box_reg" in log
    first = build_model(finished["config"]["arch"], 2).state_dict()
    assert any(not torch.equal(first[key], value) for key, value in finished["state_dict"].items())
    # Resuming from the end of epoch 1 retrains epoch 2 exactly.
    experiment.resume(run.checkpoints / "checkpoint-epoch1.pth")
    resumed = load_checkpoint(run.last)
    assert resumed["epoch"] == finished["epoch"] == 2
    assert all(torch.equal(resumed["state_dict"][key], value) for key, value in finished["state_dict"].items())
    ensemble = [run.last, run.checkpoints / "checkpoint-epoch1.pth"]
    predictions = dict(predict_boxes(ensemble, voc_dir / "images", threshold=0.0))
    assert len(predictions) == 6
    for found in predictions.values():
        assert found["boxes"].shape[1] == 4 and (np.diff(found["scores"]) <= 0).all()
        assert set(found["labels"].tolist()) <= {0, 1}
    results = evaluate_detector([run.last], voc_dir / "images", voc_dir / "annotations")
    # evaluate scores every box predict keeps at threshold 0 against each image's own XML boxes
    paths, truth = read_voc_folder(voc_dir / "images", voc_dir / "annotations", CLASSES)
    found = dict(predict_boxes([run.last], voc_dir / "images", threshold=0.0))
    assert sorted(found) == [path.name for path in paths]
    expected = coco([{key: torch.from_numpy(value) for key, value in found[path.name].items()} for path in paths],
                    [{"boxes": torch.from_numpy(boxes.boxes), "labels": torch.from_numpy(boxes.labels)}
                     for boxes in truth])
    assert results == pytest.approx(expected) and "ap_0" in results
    csv_path = tmp_path / "boxes.csv"
    images, boxes = predict_to_csv([run.root], voc_dir / "images", csv_path, threshold=0.0, draw_dir=tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "ImageId,ClassId,ClassName,Score,XMin,YMin,XMax,YMax"
    assert images == 6 and len(lines) == 1 + boxes
    assert len(list((tmp_path / "out").glob("*.png"))) == 6
    # The command line takes the run folder: boxes CSV and drawings, then the mAP table.
    result = invoke("predict", "-m", run.root, "-i", voc_dir / "images", "-o", tmp_path / "cli.csv",
                    "--threshold", 0.0, "--visualize", tmp_path / "drawn", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"wrote {boxes} boxes scoring >= 0.0 in 6 images" in result.output, result.output
    assert (tmp_path / "cli.csv").read_text() == csv_path.read_text()
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 6
    result = invoke("evaluate", "-m", run.last, "--images", voc_dir / "images",
                    "--annotations", voc_dir / "annotations", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"= {results['map']:.3f}" in result.output
    result = invoke("predict", "-m", run.last, "-i", voc_dir / "images", "--tta", "hflip")
    assert result.exit_code == 2 and "--tta: segmentation options" in result.output


def test_neu_det_loader_reads_the_real_layout(shared_data):
    names = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    data = VOCDataLoader(str(shared_data / "neu-det"), batch_size=2, validation_split=0.1, num_workers=0,
                         classes=6, class_names=names, transforms=DetectionTransforms(), seed=0)
    assert len(data.train_dataset) + len(data.valid_dataset) == 1620 and len(data.valid_dataset) == 162
    images, targets = next(iter(data.valid_loader))
    assert images[0].shape == (3, 200, 200) and targets[0]["boxes"].shape[1] == 4
