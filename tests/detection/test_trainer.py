"""The detection trainer on a tiny Faster R-CNN: config errors, training steps, checkpoints, resume, and the
prediction and evaluation of the run it trains (python API and command line)."""

import urllib.error

import numpy as np
import pytest
import torch
from inference_runs import invoke
from voc_data import CLASSES, voc_dir  # noqa: F401 (fixture)

from sever import experiment
from sever.data_loader.voc import read_voc_folder
from sever.detection.metric import MeanAP
from sever.detection.predict import evaluate_detector, predict_boxes, predict_to_csv
from sever.exceptions import ConfigError
from sever.model.model import build_model
from sever.utils.checkpoint import load_checkpoint

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
    metric = MeanAP()
    metric.update([{key: torch.from_numpy(value) for key, value in found[path.name].items()} for path in paths],
                  [{"boxes": torch.from_numpy(boxes.boxes), "labels": torch.from_numpy(boxes.labels)} for boxes in truth])
    expected = metric.compute()
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
