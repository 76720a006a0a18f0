"""Pre-flight data checks and ``sever check-data``: every bad image and mask found before training."""

import logging
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sever.cli.app import cli
from sever.data_loader.augmentation import MIN_IMAGE_SIDE, HeavyCropTransforms
from sever.data_loader.checks import DataReport, check_dataset, image_header_size
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.datasets import read_grey
from sever.exceptions import ConfigError, DataError


def encoded(extension, height=40, width=70, flags=()):
    image = (np.random.default_rng(height * width).random((height, width)) * 255).astype(np.uint8)
    return cv2.imencode(extension, image, list(flags))[1].tobytes()


@pytest.fixture
def data(demo_dir, tmp_path):
    """A copy of the demo data the test may damage."""
    return shutil.copytree(demo_dir, tmp_path / "data")


def loader(data_dir, **kwargs):
    options = dict(batch_size=4, validation_split=0.25, num_workers=0, classes=4,
                   transforms=HeavyCropTransforms(64, 64), seed=1)
    return SteelDataLoader(str(data_dir), **{**options, **kwargs})


def csv_rows(data_dir):
    return (data_dir / "train.csv").read_text().splitlines()


def write_rows(data_dir, lines):
    (data_dir / "train.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name, blob", [
    ("baseline.jpg", encoded(".jpg")),
    ("progressive.jpg", encoded(".jpg", flags=(cv2.IMWRITE_JPEG_PROGRESSIVE, 1))),
    ("tall.jpg", encoded(".jpg", height=300, width=17)),
    ("grey.png", encoded(".png")),
    ("other.bmp", encoded(".bmp", height=33, width=9)),
])
def test_header_size_equals_the_decoded_size(tmp_path, name, blob):
    path = tmp_path / name
    path.write_bytes(blob)
    assert image_header_size(path) == read_grey(path).shape == image_header_size(path, full=True)


def test_header_size_skips_exif_and_fill_bytes(tmp_path):
    blob = encoded(".jpg", height=21, width=34)
    app1 = b"\xff\xe1" + (2 + 5000).to_bytes(2, "big") + b"E" * 5000  # a large metadata segment
    path = tmp_path / "exif.jpg"
    path.write_bytes(blob[:2] + app1 + b"\xff" + blob[2:])  # and one fill byte before the next marker
    assert image_header_size(path) == (21, 34) == read_grey(path).shape


@pytest.mark.parametrize("name, blob, message", [
    ("cut.jpg", encoded(".jpg")[:300], "truncated or corrupt JPEG"),
    ("cut.png", encoded(".png")[:-20], "truncated or corrupt PNG"),
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"this is no image, whatever its name", "not a JPEG"),
    ("header.jpg", b"\xff\xd8\xff\xe0\x00", "corrupt JPEG header"),
    ("scan-first.jpg", b"\xff\xd8\xff\xda\x00\x02" + b"\x00" * 20 + b"\xff\xd9", "no frame size"),
    ("noihdr.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30 + b"\x00\x00\x00\x00IEND\xaeB`\x82", "no IHDR"),
    ("zero.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + b"\x00" * 8 + b"\x00" * 9
     + b"\x00\x00\x00\x00IEND\xaeB`\x82", "image size of 0x0"),
    ("junk.bmp", b"BM not really", "not a readable image"),
])
def test_broken_images_raise_data_errors_naming_the_file(tmp_path, name, blob, message):
    path = tmp_path / name
    path.write_bytes(blob)
    with pytest.raises(DataError, match=message) as caught:
        image_header_size(path)
    assert str(path) in str(caught.value)


def test_full_check_decodes_what_the_quick_one_only_frames(tmp_path):
    blob = bytearray(encoded(".png"))
    start = blob.find(b"IDAT") + 10
    blob[start:start + 20] = bytes(20)  # corrupt compressed data; header and IEND intact
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(blob))
    assert image_header_size(path) == (40, 70)
    with pytest.raises(DataError, match="not a readable image"):
        image_header_size(path, full=True)


def test_report_counts_the_demo_data(demo_dir):
    report = check_dataset(demo_dir, full=True)
    lines = csv_rows(demo_dir)[1:]
    per_class = np.bincount([int(line.split(",")[1]) for line in lines], minlength=5)[1:]
    with_masks = {line.split(",")[0] for line in lines}
    assert report.problems == []
    assert report.images == 24 and report.sizes == {(64, 256): 24}
    assert report.masks_per_class.tolist() == per_class.tolist()
    assert report.empty_images == 24 - len(with_masks)


def test_every_problem_is_listed_with_its_file_or_row(data):
    names = sorted(p.name for p in (data / "train_images").iterdir())
    victim = data / "train_images" / names[0]
    victim.write_bytes(victim.read_bytes()[:200])
    lines = csv_rows(data)
    first_id = lines[1].split(",")[0]
    lines[1] = f"{first_id},{lines[1].split(',')[1]},16380 10"  # ends past 64 * 256 pixels
    lines.append("ghost.jpg,2,1 5")
    write_rows(data, lines)
    report = check_dataset(data)
    text = "\n".join(report.problems)
    assert len(report.problems) == 3, text
    assert f"{victim}: truncated or corrupt JPEG" in text
    assert f"row 1 (line 2) (ImageId '{first_id}', class" in text and "past the 16384 pixels" in text
    assert f"row {len(lines) - 1} (line {len(lines)}) (ImageId 'ghost.jpg', class 2): no such image" in text


def test_a_broken_csv_is_reported_and_the_images_still_checked(data):
    (data / "train.csv").write_text("Image,Mask\na.jpg,1 2\n")
    victim = sorted((data / "train_images").iterdir())[3]
    victim.write_bytes(b"")
    report = check_dataset(data)
    assert len(report.problems) == 2
    assert "match no annotation format" in report.problems[0] and str(victim) in report.problems[1]
    result = CliRunner().invoke(cli, ["check-data", str(data)])
    assert result.exit_code == 1 and "match no annotation format" in result.output
    assert "images          24" in result.output
    assert "empty images" not in result.output and "class 1 masks" not in result.output


def test_loader_refuses_bad_data_before_training_listing_the_first_problems(data):
    for victim in sorted((data / "train_images").iterdir())[-7:]:
        victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"7 data problem\(s\) found before training") as caught:
        loader(data)
    message = str(caught.value)
    assert message.count("truncated or corrupt JPEG") == 5 and "... and 2 more" in message
    loader(data, check="off")  # the user's call: found only when those images load
    loader(data, check=False)  # `check: off` as YAML reads it
    with pytest.raises(ConfigError, match="data_loader.args.check: 'fast' is not one of quick, full, off"):
        loader(data, check="fast")


def test_classes_beyond_the_csv_are_a_warning_when_training(demo_dir, caplog):
    loader(demo_dir, classes=5)
    assert "classes: 5 classes expected but" in caplog.text and "only uses ClassIds 1..4" in caplog.text


def test_images_smaller_than_the_crop_are_padded_and_the_log_says_so(data, caplog):
    small = sorted((data / "train_images").iterdir())[-1]
    small.write_bytes(encoded(".jpg", height=48, width=256))
    lines = [line for line in csv_rows(data) if not line.startswith(small.name)]
    write_rows(data, lines)
    with caplog.at_level(logging.INFO, logger="sever.data_loader.checks"):
        loader(data)  # a 64x64 crop
    assert "image heights min 48, median 64, max 64" in caplog.text
    assert "1 image(s) smaller than the 64x64 crop are padded to it" in caplog.text


def test_an_image_too_small_to_pad_is_a_problem_naming_it(data):
    tiny = sorted((data / "train_images").iterdir())[-1]
    tiny.write_bytes(encoded(".jpg", height=64, width=MIN_IMAGE_SIDE - 1))
    write_rows(data, [line for line in csv_rows(data) if not line.startswith(tiny.name)])
    with pytest.raises(DataError, match=rf"{tiny.name}: 64x{MIN_IMAGE_SIDE - 1} is too small to train on"):
        loader(data)


def test_the_shape_lines_tell_the_size_distribution_and_what_is_done_with_it():
    report = DataReport(sizes=Counter({(100, 300): 3, (250, 40): 1, (400, 1000): 1}))
    lines = report.shape_lines(crop=(128, 128), tile=(256, 512))
    assert lines[0].split() == "image heights min 100, median 100, max 400".split()
    assert lines[1].split() == "image widths min 40, median 300, max 1000".split()
    assert "4 image(s) smaller than the 128x128 crop are padded to it" in lines[2] and "1 cropped" in lines[2]
    assert "1 image(s) larger than the 256x512 tile are predicted in tiles, 4 whole" in lines[3]
    assert "whole images" in report.shape_lines()[3]


def test_pseudo_label_image_also_in_the_validation_split_is_refused(data):
    names = sorted(p.name for p in (data / "train_images").iterdir())
    test_name = sorted((data / "test_images").iterdir())[0]
    shutil.copy(data / "train_images" / names[0], data / "test_images" / names[0])
    (data / "pseudo.csv").write_text(f"ImageId_ClassId,EncodedPixels\n{names[0]}_1,1 3\n{test_name.name}_2,\n")
    with pytest.raises(DataError, match=rf"pseudo.csv row 1 \(line 2\) \(ImageId '{names[0]}'.*also listed in"):
        loader(data, validation_split=23, pseudo_csv="pseudo.csv", batch_size=1)


def test_check_data_command_prints_the_summary(demo_dir):
    result = CliRunner().invoke(cli, ["check-data", str(demo_dir), "--full"])
    assert result.exit_code == 0, result.output
    assert "images          24" in result.output and "problems        0" in result.output


def test_check_data_command_exits_1_and_lists_each_problem(data):
    victim = sorted((data / "train_images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    result = CliRunner().invoke(cli, ["check-data", str(data), "--classes", "5"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "problems        2" in result.output
    assert f"{victim}: truncated or corrupt JPEG" in result.output
    assert "classes: 5 classes expected but" in result.output and "only uses ClassIds 1..4" in result.output
    assert "Traceback" not in result.output


def test_check_data_on_neu_seg(shared_data):
    report = check_dataset(shared_data / "neu-seg", classes=3)
    assert report.problems == [] and report.images == 3630 and report.sizes == {(200, 200): 3630}
    assert int(report.masks_per_class.sum()) == 4337
