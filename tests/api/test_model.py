"""sever.load(...).predict: arrays, files, folders and lists give the rows and masks sever predict writes."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever.api.model import as_grey, load, named_inputs
from sever.data_loader.datasets import list_images, read_grey
from sever.exceptions import CheckpointError, DataError
from sever.inference.outputs import load_probabilities

LOW = "threshold: 0.45\nmin_pixels: 0\n"  # random weights: probabilities near 0.5, so some pixels pass


@pytest.fixture
def settings(tmp_path) -> Path:
    path = tmp_path / "low.yml"
    path.write_text(LOW)
    return path


def csv_rows(path: Path) -> list[tuple]:
    with open(path, newline="") as stream:
        return [tuple(row) for row in list(csv.reader(stream))[1:]]


def as_text(rows: list[tuple]) -> list[tuple]:
    return [tuple(str(value) for value in row) for row in rows]


def cli_predict(run: Path, images: Path, out: Path, *options) -> list[tuple]:
    result = invoke("predict", "-m", run, "-i", images, "-o", out, "--device", "cpu", *options)
    assert result.exit_code == 0, result.output
    return csv_rows(out)


def test_an_array_gives_the_masks_and_rows_of_its_file(runs, demo_dir, settings, tmp_path):
    images = demo_dir / "test_images"
    expected = cli_predict(runs["fpn"], images, tmp_path / "s.csv", "--postprocess", settings)
    model = load(runs["fpn"])
    names = list_images(images)
    arrays = [read_grey(images / name) for name in names]
    from_arrays = model.predict(arrays, postprocess=settings, device="cpu")
    from_folder = model.predict(images, postprocess=settings, device="cpu")
    assert [r.name for r in from_arrays] == [f"image{i}" for i in range(len(names))]
    assert [r.name for r in from_folder] == names
    assert sum(r.masks.any() for r in from_folder) > 0  # the comparison is about pixels, not empty masks
    for array_result, file_result in zip(from_arrays, from_folder):
        assert array_result.masks.dtype == bool and array_result.masks.shape == (4, *array_result.image.shape)
        np.testing.assert_array_equal(array_result.masks, file_result.masks)
    assert as_text(from_folder.rle()) == expected
    renamed = [(name, *row[1:]) for name, result in zip(names, from_arrays) for row in as_text(result.rle())]
    assert renamed == expected


def test_rgb_and_single_channel_arrays_read_as_grey(runs, demo_dir, settings):
    grey = read_grey(next((demo_dir / "test_images").iterdir()))
    model = load(runs["unet"])
    shapes = [grey, np.repeat(grey[..., None], 3, axis=2), grey[..., None]]
    results = model.predict(shapes, postprocess=settings, device="cpu")
    assert results[0].masks.any()
    for result in results[1:]:
        np.testing.assert_array_equal(result.masks, results[0].masks)
    colour = np.dstack([grey, grey // 2, np.zeros_like(grey)])
    np.testing.assert_array_equal(as_grey(colour, "x"), cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY))


def test_a_list_mixes_files_and_arrays_in_input_order(runs, demo_dir, settings):
    paths = sorted((demo_dir / "test_images").iterdir())[:3]
    model = load(runs["fpn"])
    mixed = model.predict([paths[2], read_grey(paths[0]), str(paths[1])], postprocess=settings, device="cpu")
    alone = model.predict(paths, postprocess=settings, device="cpu")
    assert [r.name for r in mixed] == [paths[2].name, "image1", paths[1].name]
    for got, want in zip(mixed, [alone[2], alone[0], alone[1]]):
        np.testing.assert_array_equal(got.masks, want.masks)


def test_probabilities_are_those_predict_saves(runs, demo_dir, tmp_path):
    images = demo_dir / "test_images"
    cli_predict(runs["unet"], images, tmp_path / "s.csv", "--save-probs", tmp_path / "probs", "--tta", "hflip")
    results = load(runs["unet"]).predict(images, probabilities=True, tta="hflip", device="cpu")
    for result in results:
        saved, _ = load_probabilities(tmp_path / "probs" / f"{result.name}.npz")
        assert result.probabilities.dtype == np.float32 and result.probabilities.shape == saved.shape
        np.testing.assert_array_equal(np.round(result.probabilities * 255).astype(np.uint8), saved)
    assert load(runs["unet"]).predict(images, device="cpu")[0].probabilities is None


def test_options_change_the_prediction_as_the_cli_does(runs, demo_dir, settings, tmp_path):
    images = demo_dir / "test_images"
    options = ("--tta", "both", "--tile", "64x128", "--overlap", "0.5")
    expected = cli_predict(runs["unet"], images, tmp_path / "s.csv", "--postprocess", settings, *options)
    model = load(runs["unet"])
    tiled = model.predict(images, tta="both", tile="64x128", overlap=0.5, postprocess=settings, device="cpu")
    plain = model.predict(images, postprocess=settings, device="cpu")
    assert as_text(tiled.rle()) == expected != as_text(plain.rle())


def test_results_write_the_cli_csv(runs, demo_dir, settings, tmp_path):
    images = demo_dir / "test_images"
    for fmt in ("current", "original"):
        expected = cli_predict(runs["fpn"], images, tmp_path / f"{fmt}.csv", "--postprocess", settings, "--format", fmt)
        written = load(runs["fpn"]).predict(images, postprocess=settings, device="cpu").to_csv(tmp_path / "api.csv", fmt)
        assert csv_rows(written) == expected


def test_overlay_draws_the_masks_on_the_image(runs, demo_dir, settings):
    result = load(runs["fpn"]).predict(demo_dir / "test_images", postprocess=settings, device="cpu")[0]
    drawn = result.overlay()
    assert drawn.shape == (*result.image.shape, 3) and drawn.dtype == np.uint8
    covered = result.masks.any(axis=0)
    assert covered.any() and not covered.all()
    grey = np.repeat(result.image[..., None], 3, axis=2)
    np.testing.assert_array_equal(drawn[~covered], grey[~covered])
    assert (drawn[covered] != grey[covered]).any(axis=-1).mean() > 0.9


def test_class_names_and_an_ensemble_with_weights(runs, demo_dir, settings, tmp_path):
    model = load([runs["fpn"], runs["unet"]], weights=[3, 1])
    assert model.class_names == ["class 1", "class 2", "class 3", "class 4"]
    images = demo_dir / "test_images"
    expected = cli_predict(runs["fpn"], images, tmp_path / "s.csv", "-m", runs["unet"], "-w", 3, "-w", 1,
                           "--postprocess", settings)
    results = model.predict(images, postprocess=settings, device="cpu")
    assert results[0].class_names == model.class_names
    assert as_text(results.rle()) == expected


def test_bad_inputs_are_named(runs, demo_dir, tmp_path):
    model = load(runs["fpn"])
    with pytest.raises(DataError, match="image0: expected a uint8 image"):
        model.predict(np.zeros((64, 64), np.float32))
    with pytest.raises(DataError, match=r"image1: .*got shape \(2, 64, 64, 3\)"):
        model.predict([np.zeros((64, 64), np.uint8), np.zeros((2, 64, 64, 3), np.uint8)])
    with pytest.raises(DataError, match="missing.png: no such image file"):
        model.predict(tmp_path / "missing.png")
    with pytest.raises(DataError, match="empty list"):
        named_inputs([])
    with pytest.raises(CheckpointError, match="nope: no such checkpoint file or run folder"):
        load(tmp_path / "nope")


def test_a_corrupt_exported_model_is_refused_naming_it(tmp_path):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"not really onnx")
    model = load(exported)  # opened when first used
    with pytest.raises(CheckpointError, match=rf"{exported}: not a readable ONNX file"):
        model.predict(np.zeros((32, 32), np.uint8))
