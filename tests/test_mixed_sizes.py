"""Datasets of mixed image sizes, some smaller than the training crop, through every command."""

import re

import numpy as np
import pytest
from conftest import mixed_config
from inference_runs import invoke, make_run

from sever import experiment
from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.augmentation import PAD_LABEL
from sever.data_loader.datasets import list_images, read_grey
from sever.data_loader.demo import make_demo_data
from sever.inference.predictor import build_predictor
from sever.inference.evaluate import evaluate_predictions, validation_split
from sever.model.postprocess import PostProcessing
from sever.utils.checkpoint import load_checkpoint
from sever.utils.run import RunPaths


@pytest.fixture(scope="module")
def mixed_dir(module_tmp):
    """24 train and 6 test images, each side between a third of 64x128 and all of it (crop: 32x64).

    (Not narrower: the tiny FPN's GroupNorm needs more than a 1x1 map at stride 32.)
    """
    return make_demo_data(module_tmp("mixed"), n_train=24, n_test=6, height=64, width=128, seed=5,
                          mixed_sizes=True)


def own_sizes(masks):
    """``(h, w)`` of each image of a padded mask batch ``(B, C, H, W)``."""
    inside = masks[:, 0] != PAD_LABEL
    return [(int(m.any(1).sum()), int(m.any(0).sum())) for m in inside]


def test_the_demo_generator_makes_mixed_sizes_some_smaller_than_the_crop(mixed_dir):
    sizes = {read_grey(mixed_dir / "train_images" / name).shape for name in list_images(mixed_dir / "train_images")}
    assert len(sizes) > 15
    assert all(21 <= h <= 64 and 42 <= w <= 128 for h, w in sizes)
    assert any(h < 32 for h, _ in sizes) and any(w < 64 for _, w in sizes)


def test_batched_and_unbatched_validation_give_the_same_scores(mixed_dir, tmp_path):
    scores, mixed_batches = [], 0
    for batch_size in (4, 1):
        config = experiment.prepare_config(mixed_config(mixed_dir, tmp_path / "saved", valid_batch_size=batch_size))
        built = experiment.build_experiment(config)
        trainer = experiment.make_trainer(built, RunPaths.create(tmp_path / "runs", f"batch{batch_size}"))
        log = trainer._valid_epoch(1)  # the metric, not the loss: batch means of a loss weigh batches alike
        scores.append({k: v for k, v in log.items() if re.fullmatch(r"val_dice_(\d+|mean)", k)})
        mixed_batches += sum(len(set(own_sizes(masks))) > 1 for _, masks in built.data.valid_loader)
    assert mixed_batches > 0, "some batch of 4 holds images of different sizes"
    assert scores[0] == pytest.approx(scores[1], abs=1e-12) and len(scores[0]) == 5


def test_training_batches_carry_the_padding_of_small_images(mixed_dir, tmp_path):
    config = experiment.prepare_config(mixed_config(mixed_dir, tmp_path / "saved"))
    images, masks = next(iter(experiment.build_experiment(config).data.train_loader))
    assert images.shape[-2:] == (32, 64) and masks.shape[-2:] == (32, 64)
    assert (masks == PAD_LABEL).any(), "images narrower or lower than the crop are padded"


def test_evaluate_split_val_scores_as_the_trainers_validation(mixed_dir, tmp_path):
    """Both score each image on its own pixels: the trainer in padded batches, evaluate image by image."""
    config = mixed_config(mixed_dir, tmp_path)
    root = make_run(tmp_path / "runs", mixed_dir, "fpn", seed=1, augmentation=config["augmentation"],
                    data_loader=config["data_loader"])
    state = load_checkpoint(root / "checkpoints" / "model_best.pth")
    built = experiment.build_experiment(state["config"])
    built.model.load_state_dict(state["state_dict"])
    expected = experiment.make_trainer(built, RunPaths.create(tmp_path / "runs", "again"))._valid_epoch(1)
    predictor = build_predictor([root], device="cpu")
    paths, annotations = validation_split(predictor.models[0].config)
    settings = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0, "one_class_per_pixel": False}, 4)
    result = evaluate_predictions(predictor, settings, paths, annotations, num_workers=0)
    assert len(result.image_ids) == 12
    assert result.mean_dice == pytest.approx(expected["val_dice_mean"], abs=2e-3)  # probabilities kept as uint8


def mean_dice(output):
    return float(re.search(r"mean Dice ([\d.]+)", output).group(1))


@pytest.mark.slow
def test_train_tune_predict_evaluate_on_mixed_sizes(mixed_dir, tmp_path):
    config = mixed_config(mixed_dir, tmp_path / "saved")
    config["trainer"].update(tensorboard=True, vis_images=6)  # a grid of validation images of mixed sizes
    run = experiment.train(experiment.prepare_config(config))
    assert any(p.name.startswith("events.out.tfevents") for p in run.tensorboard.iterdir())
    tuned = tmp_path / "tuned.yml"
    result = invoke("tune", "-m", run.root, "--split", "val", "--num-workers", 0, "-o", tuned,
                    "--thresholds", "0.4,0.6", "--min-pixels", "0,20")
    assert result.exit_code == 0, result.output
    scored = invoke("evaluate", "-m", run.root, "--split", "val", "--postprocess", tuned, "--num-workers", 0)
    assert scored.exit_code == 0, scored.output
    assert 0 <= mean_dice(scored.output) <= 1
    submission = tmp_path / "submission.csv"
    predicted = invoke("predict", "-m", run.root, "-i", mixed_dir / "test_images", "-o", submission,
                       "--num-workers", 0, "--batch-size", 4)
    assert predicted.exit_code == 0, predicted.output
    names = list_images(mixed_dir / "test_images")
    rows = read_rle_csv(submission, 4, image_ids=names)
    sizes = [read_grey(mixed_dir / "test_images" / name).shape for name in names]
    for position, shape in enumerate(sizes):  # every mask decodes inside its own image
        assert rows.decode(position, shape).shape == (*shape, 4)
    against = invoke("evaluate", "--pred", submission, "--truth", mixed_dir / "test_labels.csv",
                     "--images", mixed_dir / "test_images")
    assert against.exit_code == 0, against.output


@pytest.mark.slow
def test_a_mask_folder_dataset_of_mixed_sizes_converts_trains_and_evaluates(mixed_dir, tmp_path):
    converted = invoke("convert", "--from", "kaggle", "--to", "mask-folder", "--images", mixed_dir / "train_images",
                       "--masks", tmp_path / "train_masks", "--csv", mixed_dir / "train.csv", "--classes", 4)
    assert converted.exit_code == 0, converted.output
    back = tmp_path / "back.csv"
    assert invoke("convert", "--from", "mask-folder", "--to", "kaggle", "--images", mixed_dir / "train_images",
                  "--masks", tmp_path / "train_masks", "--csv", back, "--classes", 4).exit_code == 0
    names = list_images(mixed_dir / "train_images")
    assert read_rle_csv(back, 4, image_ids=names) == read_rle_csv(mixed_dir / "train.csv", 4, image_ids=names)
    config = mixed_config(mixed_dir, tmp_path / "saved", format="mask_folder", masks=str(tmp_path / "train_masks"))
    run = experiment.train(experiment.prepare_config(config))
    scored = invoke("evaluate", "-m", run.root, "--split", "val", "--num-workers", 0)
    assert scored.exit_code == 0, scored.output
    assert 0 <= mean_dice(scored.output) <= 1


def test_check_data_reports_the_sizes_and_what_is_done_with_them(mixed_dir):
    result = invoke("check-data", mixed_dir, "--crop", "32x64", "--tile", "48x80")
    assert result.exit_code == 0, result.output
    sizes = [read_grey(mixed_dir / "train_images" / n).shape for n in list_images(mixed_dir / "train_images")]
    heights = np.array([h for h, _ in sizes])
    assert f"min {heights.min()}, median {np.median(heights):g}, max {heights.max()}" in result.output
    small = sum(h < 32 or w < 64 for h, w in sizes)
    large = sum(h > 48 or w > 80 for h, w in sizes)
    assert f"{small} image(s) smaller than the 32x64 crop are padded" in result.output
    assert f"{large} image(s) larger than the 48x80 tile are predicted in tiles" in result.output
    assert 0 < small < len(sizes) and 0 < large < len(sizes)
