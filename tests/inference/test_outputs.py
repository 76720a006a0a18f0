"""The pipelined write path of sever predict: the same files as writing batch by batch, in order, errors kept."""

import cv2
import numpy as np
import pytest
import torch

from sever.data_loader.annotations import read_rle_csv
from sever.exceptions import ConfigError, DataError
from sever.inference.outputs import Overlays, Submission, write_predictions
from sever.inference.predictor import PredictionBatch, read_images
from sever.model.postprocess import PostProcessing

CLASSES = 3


def batches(sizes=(3, 1, 2, 3, 1, 2, 2)):
    """Batches of random probabilities; names in an order no sorting would give."""
    rng = np.random.default_rng(0)
    names = [f"{rng.integers(10**6):06d}_{i}.jpg" for i in range(sum(sizes))]
    start = 0
    for size in sizes:
        scale = rng.random((size, CLASSES, 1, 1))  # some maps too faint to keep: empty rows too
        probs = torch.from_numpy((rng.integers(0, 256, (size, CLASSES, 24, 40)) * scale).astype(np.uint8))
        images = torch.from_numpy(rng.integers(0, 256, (size, 24, 40), dtype=np.uint8))
        class_probs = torch.from_numpy(rng.random((size, CLASSES), dtype=np.float32))
        yield PredictionBatch(names[start:start + size], images, probs, class_probs)
        start += size


def settings():
    return PostProcessing.from_mapping({"threshold": 0.6, "min_pixels": 50}, CLASSES).with_classifier()


def write(tmp_path, name, depth, source=None):
    out = tmp_path / name
    overlays = Overlays(out / "vis", ["a", "b", "c"], [name for batch in batches() for name in batch.names])
    summary = write_predictions(source if source is not None else batches(), settings(), out / "sub.csv",
                                save_probs=out / "probs", overlays=overlays, depth=depth)
    return out, summary


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_pipelined_writes_what_the_sequential_path_writes(tmp_path, depth):
    sequential, first = write(tmp_path, "sequential", 0)
    pipelined, second = write(tmp_path, f"pipelined{depth}", depth)
    rows = (sequential / "sub.csv").read_text().splitlines()
    assert (pipelined / "sub.csv").read_text().splitlines() == rows
    expected_order = [name for batch in batches() for name in batch.names]
    assert [row.split(",")[0] for row in rows[1::CLASSES]] == expected_order  # the batches' order, not sorted
    assert any(row.split(",")[1] for row in rows[1:]) and not all(row.split(",")[1] for row in rows[1:])
    for folder in ("probs", "vis"):
        files = sorted(p.name for p in (sequential / folder).iterdir())
        assert len(files) == len(expected_order)
        assert sorted(p.name for p in (pipelined / folder).iterdir()) == files
        for file in files:
            assert (pipelined / folder / file).read_bytes() == (sequential / folder / file).read_bytes()
    assert first.images == second.images == len(expected_order)
    assert np.array_equal(first.class_images, second.class_images)


def test_an_error_in_the_writer_thread_reaches_the_caller(tmp_path):
    def with_a_bad_batch():
        for index, batch in enumerate(batches()):
            if index == 2:
                batch.probs = batch.probs[:, :2]  # two classes for three-class settings
            yield batch

    with pytest.raises(ConfigError, match="settings are for 3 classes, the model predicts 2"):
        write(tmp_path, "bad", 2, with_a_bad_batch())
    assert not (tmp_path / "bad" / "sub.csv").exists()


def test_an_error_while_predicting_stops_the_writer(tmp_path):
    def failing():
        yield from list(batches())[:3]
        raise DataError("unreadable.jpg: corrupt JPEG")

    with pytest.raises(DataError, match="unreadable.jpg"):
        write(tmp_path, "failing", 2, failing())
    assert not (tmp_path / "failing" / "sub.csv").exists()


def grey_files(folder, count=7):
    """``count`` grey PNGs of two sizes, each a different constant value, named out of sorting order."""
    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"{(index * 5) % count}_{index}.png"
        cv2.imwrite(str(path), np.full((8 + 4 * (index % 2), 10), 10 * index, np.uint8))
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_images_are_read_in_order_in_batches_whatever_the_readers(tmp_path, workers):
    paths = grey_files(tmp_path / "images")
    read = list(read_images(paths, 3, workers))
    assert [len(batch) for batch in read] == [3, 3, 1]
    flat = [item for batch in read for item in batch]
    assert [name for name, _ in flat] == [path.name for path in paths]
    assert [int(image[0, 0]) for _, image in flat] == [10 * index for index in range(len(paths))]
    assert [image.shape for _, image in flat] == [(8 + 4 * (index % 2), 10) for index in range(len(paths))]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_a_data_error_naming_it(tmp_path, workers):
    paths = grey_files(tmp_path / "images")
    paths[4].write_bytes(b"not an image")
    batches_read = read_images(paths, 2, workers)
    assert len(next(batches_read)) == 2  # the batches before it arrive
    with pytest.raises(DataError, match=paths[4].name):
        list(batches_read)


def test_bad_batch_size_or_worker_count_is_a_config_error(tmp_path):
    paths = grey_files(tmp_path / "images", 2)
    for batch_size, workers in ((0, 1), (2, -1)):
        with pytest.raises(ConfigError, match="batch size"):
            list(read_images(paths, batch_size, workers))


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
