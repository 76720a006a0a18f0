"""sever predict --visualize: JPEG overlays, the true masks outlined from --labels, and drawing from --from-probs."""

from pathlib import Path

import cv2
import numpy as np
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever.data_loader.datasets import list_images
from sever.data_loader.annotations import read_rle_csv

HEIGHT = 64  # the demo fixture's images are 64x256; the legend strip follows below


def predict(runs, demo_dir, out, *extra):
    result = invoke("predict", "-m", runs["fpn"], "-i", demo_dir / "test_images", "-o", out / "sub.csv",
                    "--num-workers", 0, "--postprocess", out / "pp.yml", *extra)
    assert result.exit_code == 0, result.output
    return result


def drawn(folder, name):
    """The image part of the overlay of image ``name``, RGB."""
    return cv2.cvtColor(cv2.imread(str(folder / f"{Path(name).stem}.jpg")), cv2.COLOR_BGR2RGB)[:HEIGHT]


def test_labels_outline_the_true_masks_and_nothing_else(runs, demo_dir, tmp_path):
    (tmp_path / "pp.yml").write_text("threshold: 0.5\nmin_pixels: 0\n")
    labels = demo_dir / "test_labels.csv"
    predict(runs, demo_dir, tmp_path, "--visualize", tmp_path / "plain")
    predict(runs, demo_dir, tmp_path, "--visualize", tmp_path / "truth", "--labels", labels)
    names = list_images(demo_dir / "test_images")
    truth = read_rle_csv(labels, 4, image_ids=names)
    outlined = 0
    for position, name in enumerate(names):
        plain, with_truth = drawn(tmp_path / "plain", name), drawn(tmp_path / "truth", name)
        masks = truth.decode(position, (HEIGHT, 256))
        edges = np.zeros((HEIGHT, 256), np.uint8)
        for c in range(4):
            mask = masks[..., c]
            edges |= cv2.dilate(mask, np.ones((7, 7), np.uint8)) - cv2.erode(mask, np.ones((7, 7), np.uint8))
        difference = np.abs(plain.astype(int) - with_truth.astype(int)).max(axis=2)
        assert difference[edges == 0].mean() < 2, name  # away from the outlines: the same picture (JPEG noise)
        if masks.any():
            assert difference[edges > 0].mean() > 20, name  # on them: the outline's colour
            outlined += 1
    assert outlined >= 2  # the demo's test images have defects to outline


def test_overlays_from_saved_probabilities_match_the_models(runs, demo_dir, tmp_path):
    (tmp_path / "pp.yml").write_text("threshold: 0.5\nmin_pixels: 0\n")
    labels = demo_dir / "test_labels.csv"
    predict(runs, demo_dir, tmp_path, "--visualize", tmp_path / "model", "--labels", labels,
            "--save-probs", tmp_path / "probs")
    result = invoke("predict", "--from-probs", tmp_path / "probs", "-i", demo_dir / "test_images",
                    "--visualize", tmp_path / "saved", "--labels", labels, "-o", tmp_path / "again.csv",
                    "--postprocess", tmp_path / "pp.yml")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in (tmp_path / "saved").iterdir())
    for name in names:  # the same masks on the same image: the same file
        assert (tmp_path / "model" / name).read_bytes() == (tmp_path / "saved" / name).read_bytes()


def test_overlays_are_jpeg_and_far_smaller_than_png(runs, demo_dir, tmp_path):
    (tmp_path / "pp.yml").write_text("threshold: 0.5\nmin_pixels: 0\n")
    predict(runs, demo_dir, tmp_path, "--visualize", tmp_path / "vis")
    for path in (tmp_path / "vis").iterdir():
        data = path.read_bytes()
        assert path.suffix == ".jpg" and data[:3] == b"\xff\xd8\xff"
        ok, png = cv2.imencode(".png", cv2.imread(str(path)))
        assert ok and len(data) < len(png) / 2


def test_overlay_option_errors(runs, demo_dir, tmp_path):
    (tmp_path / "pp.yml").write_text("threshold: 0.5\nmin_pixels: 0\n")
    images = demo_dir / "test_images"
    result = invoke("predict", "-m", runs["fpn"], "-i", images, "--labels", demo_dir / "test_labels.csv")
    assert result.exit_code == 2 and "--labels draws the true masks on the overlays" in result.output
    predict(runs, demo_dir, tmp_path, "--save-probs", tmp_path / "probs")
    result = invoke("predict", "--from-probs", tmp_path / "probs", "--visualize", tmp_path / "vis")
    assert result.exit_code == 2 and "--visualize needs it" in result.output
    (tmp_path / "some").mkdir()
    first = list_images(images)[0]
    (tmp_path / "some" / first).write_bytes((images / first).read_bytes())
    result = invoke("predict", "--from-probs", tmp_path / "probs", "-i", tmp_path / "some",
                    "--visualize", tmp_path / "vis", "-o", tmp_path / "s.csv")
    assert result.exit_code == 1 and "no image for 5 predicted image(s)" in result.output
