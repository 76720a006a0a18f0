"""``sever pseudo-label`` and pseudo-label rounds in studies."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from inference_runs import invoke, runs  # noqa: F401  (a fixture)
from torch import nn

from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.augmentation import Normalization
from sever.data_loader.sources import read_csv_folder
from sever.exceptions import ConfigError
from sever.inference.checkpoints import LoadedModel
from sever.inference.predictor import Predictor
from sever.inference.pseudo_label import ConfidenceRule, pseudo_label
from sever.model.postprocess import PostProcessing
from sever.registries import TRANSFORMS

SIZE = 32


class GreyIsProbability(nn.Module):
    """Class 1's logit rises with the grey level (0 -> p 0, 128 -> p 0.5, 255 -> p 1); class 2 is always absent."""

    def forward(self, x):
        first = 20 * (x - 0.5)
        return torch.cat([first, torch.full_like(first, -20)], dim=1)


def predictor(tta="none"):
    config = {"classes": 2, "task": "segmentation", "class_names": ["spot", "line"]}
    return Predictor([LoadedModel(GreyIsProbability().eval(), Path("grey.pth"), config, Normalization(0.0, 1.0))],
                     tta=tta)


def write_images(folder: Path) -> dict[str, np.ndarray]:
    """Four PNGs: empty, a clear square, a half-grey (uncertain) image and a faint 2x2 blob."""
    images = {name: np.zeros((SIZE, SIZE), np.uint8) for name in ("a.png", "b.png", "c.png", "d.png")}
    images["b.png"][4:14, 6:16] = 255
    images["c.png"][:, : SIZE // 2] = 128
    images["d.png"][20:22, 20:22] = 140  # p about 0.73: inside the band, 4 of 1024 pixels
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        cv2.imwrite(str(folder / name), image)
    return images


SETTINGS = PostProcessing(threshold=(0.5, 0.5), min_pixels=(0, 0))


def test_confident_images_are_written_with_their_masks_and_the_others_dropped(tmp_path):
    images = write_images(tmp_path / "unlabelled")
    result = pseudo_label(predictor(), SETTINGS, tmp_path / "unlabelled", tmp_path / "pseudo.csv", num_workers=0)
    assert (result.kept, result.dropped) == (3, 1)
    assert result.class_images.tolist() == [2, 0]  # the square and the blob; class 2 nowhere
    header = (tmp_path / "pseudo.csv").read_text().splitlines()[0]
    assert header == "ImageId_ClassId,EncodedPixels"
    labels = read_rle_csv(tmp_path / "pseudo.csv", 2)
    assert labels.image_ids == ("a.png", "b.png", "d.png")
    assert (labels.rows > 0).all(), "every class of every kept image has its row, empty ones too"
    square = labels.decode(labels.index["b.png"], (SIZE, SIZE))
    assert (square[..., 0] == (images["b.png"] == 255)).all() and not square[..., 1].any()
    assert not labels.has_defect()[labels.index["a.png"]].any()


def test_the_loader_trains_on_the_listed_images_only(tmp_path):
    """The pseudo-label sampler's reader: an image of the folder the CSV leaves out is not labelled defect-free."""
    write_images(tmp_path / "unlabelled")
    pseudo_label(predictor(), SETTINGS, tmp_path / "unlabelled", tmp_path / "pseudo.csv", num_workers=0)
    annotations, paths = read_csv_folder(tmp_path / "unlabelled", tmp_path / "pseudo.csv", 2, listed_only=True)
    assert [p.name for p in paths] == ["a.png", "b.png", "d.png"]
    everything, _ = read_csv_folder(tmp_path / "unlabelled", tmp_path / "pseudo.csv", 2)
    assert "c.png" in everything.image_ids  # what the folder alone would have made of the dropped image


def test_min_peak_drops_a_faint_blob_the_band_lets_through(tmp_path):
    write_images(tmp_path / "unlabelled")
    rule = ConfidenceRule(min_peak=0.9)
    result = pseudo_label(predictor(), SETTINGS, tmp_path / "unlabelled", tmp_path / "pseudo.csv", rule,
                          num_workers=0)
    assert read_rle_csv(tmp_path / "pseudo.csv", 2).image_ids == ("a.png", "b.png")
    assert (result.kept, result.dropped) == (2, 2)


def test_a_wider_uncertain_share_keeps_the_half_grey_image():
    probs = torch.zeros((2, 2, 10, 10), dtype=torch.uint8)
    probs[0, 0, :, :5] = 128  # half the pixels at p 0.5
    probs[1, 0, 0, :3] = 128  # 3% of them
    assert ConfidenceRule(max_uncertain=0.02).confident(probs).tolist() == [False, False]
    assert ConfidenceRule(max_uncertain=0.05).confident(probs).tolist() == [False, True]
    assert ConfidenceRule(max_uncertain=0.5).confident(probs).tolist() == [True, True]
    assert ConfidenceRule(low=0.6, high=0.9, max_uncertain=0).confident(probs).tolist() == [True, True]


def test_an_unsure_classifier_drops_the_image():
    probs = torch.zeros((3, 2, 4, 4), dtype=torch.uint8)
    class_probs = torch.tensor([[0.05, 0.9], [0.5, 0.1], [0.1, 0.79]])
    assert ConfidenceRule().confident(probs, class_probs).tolist() == [True, False, False]


@pytest.mark.parametrize("rule, message", [
    (ConfidenceRule(low=0.8, high=0.2), "pseudo.low and pseudo.high: need 0 <= low < high <= 1"),
    (ConfidenceRule(max_uncertain=1.5), "pseudo.max_uncertain: a share of pixels in"),
    (ConfidenceRule(min_peak=0.1), r"pseudo.min_peak: must be in \(0.2, 1\]"),
])
def test_a_bad_rule_names_its_setting(rule, message):
    with pytest.raises(ConfigError, match=message):
        rule.check(lambda name: f"pseudo.{name}")


def test_labels_for_another_class_count_are_refused_before_predicting(tmp_path):
    write_images(tmp_path / "unlabelled")
    with pytest.raises(ConfigError, match=r"grey.pth\) predict 2 classes but the pseudo-labels are for 4"):
        pseudo_label(predictor(), SETTINGS, tmp_path / "unlabelled", tmp_path / "pseudo.csv", classes=4)
    assert not (tmp_path / "pseudo.csv").exists()


# ----------------------------------------------------------------------------- the command


def test_cli_writes_pseudo_labels_of_a_run(runs, demo_dir, tmp_path):  # noqa: F811
    output = tmp_path / "pseudo.csv"
    result = invoke("pseudo-label", "-m", runs["fpn"], "-i", demo_dir / "test_images", "-o", output,
                    "--max-uncertain", 1, "--device", "cpu", "--num-workers", 0, "--tta", "hflip")
    assert result.exit_code == 0, result.output
    assert "kept 6 of 6 images (0 dropped as not confident)" in result.output
    assert f"pseudo_images: {(demo_dir / 'test_images').resolve()}" in result.output
    labels = read_rle_csv(output, 4)
    assert sorted(labels.image_ids) == sorted(p.name for p in (demo_dir / "test_images").iterdir())

    strict = invoke("pseudo-label", "-m", runs["fpn"], "-i", demo_dir / "test_images", "-o", tmp_path / "none.csv",
                    "--max-uncertain", 0, "--low", 0.01, "--high", 0.99, "--device", "cpu", "--num-workers", 0)
    assert strict.exit_code == 0, strict.output
    assert "kept 0 of 6 images (6 dropped" in strict.output  # random weights: p near 0.5 everywhere


def test_cli_names_an_empty_folder_and_mismatched_models(runs, tmp_path):  # noqa: F811
    (tmp_path / "empty").mkdir()
    result = invoke("pseudo-label", "-m", runs["fpn"], "-i", tmp_path / "empty", "-o", tmp_path / "p.csv")
    assert result.exit_code == 1 and f"no images (" in result.output and str(tmp_path / "empty") in result.output
    write_images(tmp_path / "some")
    result = invoke("pseudo-label", "-m", runs["fpn"], "-m", runs["three"], "-i", tmp_path / "some",
                    "-o", tmp_path / "p.csv", "--device", "cpu")
    assert result.exit_code == 1 and "predicts 4 classes but" in result.output and "predicts 3" in result.output
    result = invoke("pseudo-label", "-m", runs["fpn"], "-i", tmp_path / "some", "-o", tmp_path / "p.csv",
                    "--low", 0.9, "--high", 0.5)
    assert result.exit_code == 1 and "--low and --high: need 0 <= low < high <= 1" in result.output
    assert not (tmp_path / "p.csv").exists()


# ----------------------------------------------------------------------------- rounds in a study


@pytest.fixture(scope="module")
def round_study(demo_dir, module_tmp):
    """A 2-fold study of the tiny config with one pseudo-label round over the demo test images."""
    from conftest import tiny_config

    from sever.study import train as study

    config = tiny_config(demo_dir, module_tmp("rounds"), epochs=1, tune_postprocess=True)
    config["pseudo"] = {"images": str(demo_dir / "test_images"), "rounds": 1, "share": 0.25, "max_uncertain": 1.0}
    return study.train_study(config, folds=2).root


@pytest.mark.slow
def test_a_pseudo_round_trains_the_folds_again_with_the_previous_rounds_labels(round_study, demo_dir):
    from sever.inference.outputs import probability_files
    from sever.study.folder import StudyPaths

    paths = StudyPaths(round_study)
    labels = read_rle_csv(paths.at_round(1).pseudo_csv, 4)
    assert sorted(labels.image_ids) == sorted(p.name for p in (demo_dir / "test_images").iterdir())
    record = yaml.safe_load(paths.file.read_text())
    assert record["rounds"][0]["pseudo_images"] == 6 and record["rounds"][0]["pseudo_dropped"] == 0
    for fold in range(2):
        run = paths.at_round(1).fold_dir(fold)
        assert run == Path(round_study) / "round1" / f"fold{fold}"
        args = yaml.safe_load((run / "config.yaml").read_text())["data_loader"]["args"]
        assert args["pseudo_csv"] == str(paths.at_round(1).pseudo_csv.resolve())
        assert args["sampler"] == {"type": "WeightedFixedBatchSampler", "args": {"weights": [0.75, 0.25]}}
        data = SteelDataLoader(**{**args, "num_workers": 0}, classes=4, seed=7, transforms=TRANSFORMS.build(
            {"type": "HeavyCropTransforms", "args": {"height": 64, "width": 64}}, "augmentation"))
        assert len(data.train_dataset) == 12 + 6 and len(data.valid_dataset) == 12  # pseudo-labels train only
        same = [sorted(p.name for p in probability_files(paths.at_round(r).oof_dir(fold))) for r in (0, 1)]
        assert same[0] == same[1], "a round validates on the labelled out-of-fold images only"
    scores = [record["score"], record["rounds"][0]["score"]]
    assert all(isinstance(score, float) for score in scores)
    assert paths.chosen_round() == (1 if scores[1] > scores[0] else 0)
    assert (paths.round_dir(1) / "postprocess.yml").is_file() and (Path(round_study) / "postprocess.yml").is_file()


@pytest.mark.slow
def test_predict_uses_the_round_with_the_best_out_of_fold_score(round_study, demo_dir, tmp_path):
    from sever.study.folder import StudyPaths

    paths = StudyPaths(round_study)
    original = paths.file.read_text()
    try:
        for best, other in ((1, 0), (0, 1)):
            paths.at_round(best).record(score=0.9)
            paths.at_round(other).record(score=0.1)
            result = invoke("predict", "-m", round_study, "-i", demo_dir / "test_images", "-o", tmp_path / "s.csv",
                            "--device", "cpu", "--num-workers", 0)
            assert result.exit_code == 0, result.output
            assert f"post-processing: {paths.round_dir(best) / 'postprocess.yml'}" in result.output
        paths.at_round(1).set_status(0, "failed")  # round 1 unfinished: round 0 whatever the scores
        assert paths.chosen_round() == 0
    finally:
        paths.file.write_text(original)


@pytest.mark.slow
def test_a_resumed_study_retrains_only_the_unfinished_fold_of_the_round(round_study):
    from sever.study import train as study
    from sever.study.folder import StudyPaths

    paths = StudyPaths(round_study)
    original = paths.file.read_text()
    csv_written = paths.at_round(1).pseudo_csv.stat().st_mtime_ns
    kept = (paths.at_round(1).fold_dir(0) / "checkpoints" / "model_best.pth").stat().st_mtime_ns
    round0 = (paths.at_round(0).fold_dir(1) / "checkpoints" / "model_best.pth").stat().st_mtime_ns
    try:
        paths.at_round(1).set_status(1, "pending")
        paths.at_round(1).record(score=None)
        study.resume_study(round_study)
        assert [e.status for e in paths.at_round(1).entries()] == ["done", "done"]
        assert paths.at_round(1).round_record()["score"] is not None  # tuned again
        assert paths.at_round(1).pseudo_csv.stat().st_mtime_ns == csv_written
        assert (paths.at_round(1).fold_dir(0) / "checkpoints" / "model_best.pth").stat().st_mtime_ns == kept
        assert (paths.at_round(0).fold_dir(1) / "checkpoints" / "model_best.pth").stat().st_mtime_ns == round0
    finally:
        paths.file.write_text(original)


@pytest.mark.parametrize("block, message", [
    ({"images": "IMAGES", "rounds": 0}, "pseudo.rounds: an integer >= 1, got 0"),
    ({"images": "IMAGES", "round": 2}, "pseudo.round: unknown key"),
    ({"rounds": 1}, "pseudo.images: the folder of unlabelled images is required"),
    ({"images": "IMAGES", "share": 1.5}, r"pseudo.share: a share of each batch in \(0, 1\)"),
    ({"images": "IMAGES", "low": 0.9}, "pseudo.low and pseudo.high"),
    ({"images": "EMPTY"}, "no images .* in .*empty"),
])
def test_a_bad_pseudo_block_is_refused_before_the_study_folder_exists(make_config, demo_dir, tmp_path, block,
                                                                      message):
    from sever.study import train as study
    from sever.exceptions import SeverError

    (tmp_path / "empty").mkdir()
    folders = {"IMAGES": str(demo_dir / "test_images"), "EMPTY": str(tmp_path / "empty")}
    config = {**make_config(), "pseudo": {key: folders.get(value, value) for key, value in block.items()}}
    with pytest.raises(SeverError, match=message):
        study.create_study(config, 2)
    assert not (tmp_path / "saved").exists()


def test_a_single_run_with_a_pseudo_block_asks_for_folds(make_config, demo_dir, tmp_path):
    path = tmp_path / "x.yml"
    path.write_text(yaml.safe_dump({**make_config(), "pseudo": {"images": str(demo_dir / "test_images")}}))
    result = invoke("train", "-c", path)
    assert result.exit_code == 1 and "pseudo: pseudo-label rounds train a study: give --folds K" in result.output
