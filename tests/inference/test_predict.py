"""sever predict: loading runs, ensembles, TTA, submissions and their errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from inference_runs import invoke, runs  # noqa: F401 (fixture)
from torch import nn

from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.augmentation import Normalization
from sever.data_loader.datasets import read_grey
from sever.data_loader.rle import decode_masks
from sever.exceptions import CheckpointError, ConfigError
from sever.inference.checkpoints import LoadedModel, load_model
from sever.inference.outputs import Submission, load_probabilities, save_probabilities
from sever.inference.predictor import Predictor, average_probabilities, build_predictor, quantize, tta_probabilities
from sever.model.postprocess import PostProcessing
from sever.utils.checkpoint import atomic_torch_save, load_checkpoint

NO_WIPE = "threshold: 0.5\nmin_pixels: 0\n"


def test_average_modes_on_the_writeups_example():
    probs = [torch.tensor([0.2]), torch.tensor([0.3]), torch.tensor([0.7])]
    assert average_probabilities(probs, "mean").item() == pytest.approx(0.4)
    assert average_probabilities(probs, "rms").item() == pytest.approx(((0.04 + 0.09 + 0.49) / 3) ** 0.5)  # 0.45
    assert average_probabilities(probs, "max").item() == pytest.approx(0.7)
    assert average_probabilities(probs, "mean", [1, 1, 2]).item() == pytest.approx((0.2 + 0.3 + 1.4) / 4)
    assert average_probabilities(probs, "rms", [0, 0, 1]).item() == pytest.approx(0.7)


def test_average_refuses_bad_weights():
    probs = [torch.zeros(1), torch.ones(1)]
    with pytest.raises(ConfigError, match="max averaging takes no weights"):
        average_probabilities(probs, "max", [1, 2])
    with pytest.raises(ConfigError, match="1 weights given for 2 models"):
        average_probabilities(probs, "mean", [1])
    with pytest.raises(ConfigError, match="not one of mean, rms, max"):
        average_probabilities(probs, "median")


class EchoModel(nn.Module):
    """Logits = the input's first channel, repeated per class and shifted by the class index."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return torch.cat([x[:, :1] + c for c in range(self.classes)], dim=1)


@pytest.mark.parametrize("tta", ["none", "hflip", "vflip", "both"])
def test_tta_views_come_back_aligned(tta):
    x = torch.randn(3, 1, 5, 7)  # nothing symmetric: a misaligned view would change the mean
    expected = torch.sigmoid(torch.cat([x, x + 1], dim=1))
    assert torch.allclose(tta_probabilities(EchoModel(), x, tta), expected, atol=1e-6)


def test_hflip_tta_averages_a_model_with_its_mirrored_prediction():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)  # not mirror-symmetric
    x = torch.randn(2, 1, 6, 9)
    with torch.no_grad():
        expected = (torch.sigmoid(conv(x)) + torch.sigmoid(conv(x.flip(-1))).flip(-1)) / 2
        assert torch.allclose(tta_probabilities(conv, x, "hflip"), expected, atol=1e-6)


def loaded(model, mean=0.5, std=0.25, classes=2):
    config = {"classes": classes, "task": "segmentation", "class_names": None}
    return LoadedModel(model.eval(), Path("echo.pth"), config, Normalization(mean, std))


def test_each_model_normalises_with_its_own_statistics():
    images = torch.randint(0, 256, (2, 4, 6), dtype=torch.uint8)
    predictor = Predictor([loaded(EchoModel(), 0.5, 0.25), loaded(EchoModel(), 0.2, 0.5)], tta="hflip")
    probs, class_probs = predictor.predict(images)
    x = images.float() / 255
    expected = (torch.sigmoid((x - 0.5) / 0.25) + torch.sigmoid((x - 0.2) / 0.5)) / 2
    assert class_probs is None and probs.dtype == torch.uint8 and probs.shape == (2, 2, 4, 6)
    assert (probs[:, 0].int() - quantize(expected).int()).abs().max() <= 1


def test_ensemble_of_two_architectures_round_trips_through_the_csv(runs, demo_dir, tmp_path):
    pp = tmp_path / "pp.yml"
    pp.write_text(NO_WIPE)
    images = demo_dir / "test_images"
    out = tmp_path / "sub.csv"
    result = invoke("predict", "-m", runs["fpn"], "-m", runs["unet"], "-w", 2, "-w", 1, "-i", images, "-o", out,
                    "--postprocess", pp, "--tta", "hflip", "--num-workers", 0, "--save-probs", tmp_path / "probs")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output
    assert out.read_text().splitlines()[0] == "ImageId,EncodedPixels,ClassId"
    assert len(out.read_text().splitlines()) == 1 + 6 * 4
    written = read_rle_csv(out, 4)
    assert written.image_ids == tuple(sorted(p.name for p in images.iterdir()))

    settings = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0}, 4)
    for position, name in enumerate(written.image_ids):
        probs, _ = load_probabilities(tmp_path / "probs" / f"{name}.npz")
        assert probs.shape == (4, *read_grey(images / name).shape)
        masks = settings.apply(torch.from_numpy(probs)[None])[0].numpy()
        decoded = decode_masks(written.encodings[position], probs.shape[1:]).transpose(2, 0, 1)
        np.testing.assert_array_equal(decoded, masks)  # the RLE round trip keeps every pixel
    assert written.has_defect().any()


@pytest.mark.parametrize("fmt, header", [("current", "ImageId,EncodedPixels,ClassId"),
                                         ("original", "ImageId_ClassId,EncodedPixels")])
def test_both_submission_formats_round_trip(tmp_path, fmt, header):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 4, 16, 24)) > 0.7
    masks[1, 2] = False  # an empty mask: an empty EncodedPixels
    submission = Submission(4)
    submission.add(["a.jpg", "b.jpg"], masks[:2])
    submission.add(["c.jpg"], masks[2:])
    path = submission.write(tmp_path / "s.csv", fmt)
    lines = path.read_text().splitlines()
    assert lines[0] == header and len(lines) == 1 + 3 * 4
    read = read_rle_csv(path, 4)
    assert read.image_ids == ("a.jpg", "b.jpg", "c.jpg") and read.encodings[1, 2] == ""
    for position in range(3):
        np.testing.assert_array_equal(read.decode(position, (16, 24)).transpose(2, 0, 1), masks[position])


def test_saved_probabilities_are_ensembled_and_post_processed(tmp_path):
    rng = np.random.default_rng(1)
    x = {n: rng.integers(40, 216, (4, 8, 12)) for n in ("a.jpg", "b.jpg")}
    # y - x divisible by 4: the weighted mean (3 x + y) / 4 is a whole level, never a rounding tie
    maps = {"x": x, "y": {n: v + 4 * rng.integers(-10, 11, v.shape) for n, v in x.items()}}
    maps = {d: {n: v.astype(np.uint8) for n, v in images.items()} for d, images in maps.items()}
    for d, images in maps.items():
        (tmp_path / d).mkdir()
        for name, probs in images.items():
            save_probabilities(tmp_path / d, name, probs)
    pp = tmp_path / "pp.yml"
    pp.write_text(NO_WIPE)
    out = tmp_path / "s.csv"
    result = invoke("predict", "--from-probs", tmp_path / "x", "--from-probs", tmp_path / "y", "-w", 3, "-w", 1,
                    "--postprocess", pp, "-o", out, "--format", "original")
    assert result.exit_code == 0, result.output
    written = read_rle_csv(out, 4)
    settings = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0}, 4)
    for position, name in enumerate(written.image_ids):
        mean = (3 * maps["x"][name].astype(int) + maps["y"][name]) // 4
        masks = settings.apply(torch.from_numpy(mean.astype(np.uint8))[None])[0].numpy()
        np.testing.assert_array_equal(written.decode(position, (8, 12)).transpose(2, 0, 1), masks)
    (tmp_path / "y" / "b.jpg.npz").unlink()
    assert "no probabilities for 1 image(s)" in cli_error("predict", "--from-probs", tmp_path / "x",
                                                          "--from-probs", tmp_path / "y", "-o", out)


def test_ema_weights_are_preferred(runs, tmp_path):
    state = load_checkpoint(Path(runs["fpn"]) / "checkpoints" / "model_best.pth")
    shifted = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    path = tmp_path / "ema.pth"
    atomic_torch_save({**state, "ema_state_dict": {**shifted, "n_averaged": torch.tensor(3)}}, path)
    model = load_model(path).model
    name, value = next((k, v) for k, v in state["state_dict"].items() if v.is_floating_point())
    assert torch.equal(model.state_dict()[name], value + 1)


def test_visualize_and_classifier_gating(runs, demo_dir, tmp_path):
    result = invoke("predict", "-m", runs["fpn"], "--classifier", runs["classifier"], "-i", demo_dir / "test_images",
                    "-o", tmp_path / "sub.csv", "--num-workers", 0, "--visualize", tmp_path / "vis",
                    "--save-probs", tmp_path / "probs")
    assert result.exit_code == 0, result.output
    drawn = sorted((tmp_path / "vis").glob("*.jpg"))
    assert len(drawn) == 6
    assert cv2.imread(str(drawn[0])).shape[0] > 64  # the image and a legend below it
    _, class_probs = load_probabilities(next((tmp_path / "probs").glob("*.npz")))
    assert class_probs.shape == (4,) and ((0 <= class_probs) & (class_probs <= 1)).all()


def cli_error(*args):
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output


def test_clear_errors(runs, demo_dir, tmp_path):
    images = demo_dir / "test_images"
    out = tmp_path / "s.csv"
    assert "no such checkpoint file or run folder" in cli_error("predict", "-m", tmp_path / "nope", "-i", images, "-o", out)
    (tmp_path / "empty").mkdir()
    assert "not a run folder with checkpoints" in cli_error("predict", "-m", tmp_path / "empty", "-i", images, "-o", out)
    assert "no images" in cli_error("predict", "-m", runs["fpn"], "-i", tmp_path / "empty", "-o", out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    message = cli_error("predict", "-m", runs["fpn"], "-i", bad, "-o", out, "--num-workers", 1)
    assert "broken.jpg" in message and "corrupt JPEG" in message
    message = cli_error("predict", "-m", runs["fpn"], "-m", runs["three"], "-i", images, "-o", out)
    assert "predicts 4 classes but" in message and "predicts 3" in message
    assert "give it with --classifier" in cli_error("predict", "-m", runs["classifier"], "-i", images, "-o", out)
    pp = tmp_path / "pp.yml"
    pp.write_text("threshold: [0.5, 0.5]\n")
    assert "threshold: 2 values given for 4 classes" in cli_error(
        "predict", "-m", runs["fpn"], "-i", images, "-o", out, "--postprocess", pp)


def test_checkpoint_that_does_not_fit_its_config(runs, tmp_path):
    state = load_checkpoint(Path(runs["fpn"]) / "checkpoints" / "model_best.pth")
    unet = load_checkpoint(Path(runs["unet"]) / "checkpoints" / "model_best.pth")
    path = tmp_path / "mixed.pth"
    atomic_torch_save({**state, "state_dict": unet["state_dict"]}, path)
    with pytest.raises(CheckpointError, match="weights do not fit the FPN model"):
        load_model(path)


def test_classifier_with_another_class_count_is_refused(runs):
    with pytest.raises(ConfigError, match="predicts 4 classes but .* predicts 3"):
        build_predictor([runs["three"]], [runs["classifier"]], device="cpu")
