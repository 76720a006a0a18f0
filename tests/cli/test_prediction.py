"""sever predict on the command line: ensembles round-tripping through the CSV, --from-probs, --visualize with
a classifier, and the errors a user meets."""

import cv2
import numpy as np
import torch
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.datasets import read_grey
from sever.data_loader.rle import decode_masks
from sever.inference.outputs import load_probabilities, save_probabilities
from sever.model.postprocess import PostProcessing

NO_WIPE = "threshold: 0.5\nmin_pixels: 0\n"


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
