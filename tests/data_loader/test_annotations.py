"""RLE decode/encode (rle.py), the Annotations container and the CSV formats (annotations.py)."""

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sever.data_loader.annotations import Annotations, read_rle_csv, write_rle_csv
from sever.data_loader.rle import decode_masks, rle_decode, rle_encode, rle_parse
from sever.exceptions import DataError, RLEError

SEVERSTAL_SHAPE = (256, 1600)


@st.composite
def masks(draw, max_side=12):
    """Random 0/1 uint8 masks of random small shapes, runs of all lengths likely."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    return draw(arrays(np.uint8, (height, width), elements=st.integers(0, 1)))


# ----------------------------------------------------------------------- RLE


@given(masks())
def test_encode_then_decode_gives_the_mask_back(mask):
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@given(masks())
def test_decode_then_encode_gives_the_string_back(mask):
    rle = rle_encode(mask)
    assert rle_encode(rle_decode(rle, mask.shape)) == rle


def decode_by_slices(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The plain reference: each run slice-assigned into a flat column-major mask."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2]):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(shape, order="F")


@st.composite
def run_lists(draw, max_side=40):
    """``(rle, shape)``: random sorted disjoint runs (touching allowed) on a random mask shape."""
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    size = shape[0] * shape[1]
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=60)))
    pairs = [(a, b) for a, b in zip(cuts[0::2], cuts[1::2]) if b > a]
    return " ".join(f"{a + 1} {b - a}" for a, b in pairs), shape


@given(run_lists())
def test_decode_equals_slice_assigning_each_run(case):
    rle, shape = case
    mask = rle_decode(rle, shape)
    assert mask.shape == shape and mask.dtype == np.uint8
    assert np.array_equal(mask, decode_by_slices(rle, shape))


def test_decode_of_more_runs_than_the_cached_values_cover():
    mask = np.zeros(SEVERSTAL_SHAPE, np.uint8)
    mask[::2, :] = 1  # every other pixel of each column: 204,800 runs
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle, SEVERSTAL_SHAPE), mask)
    assert np.array_equal(rle_decode(rle, SEVERSTAL_SHAPE), decode_by_slices(rle, SEVERSTAL_SHAPE))


@given(masks(), st.data())
def test_column_window_equals_slicing_the_full_decode(mask, data):
    width = mask.shape[1]
    first = data.draw(st.integers(0, width - 1))
    stop = data.draw(st.integers(first + 1, width))
    rle = rle_encode(mask)
    window = rle_decode(rle, mask.shape, columns=(first, stop))
    assert window.shape == (mask.shape[0], stop - first)
    assert np.array_equal(window, rle_decode(rle, mask.shape)[:, first:stop])


@given(st.data())
def test_decode_masks_stacks_the_class_decodes(data):
    height, width = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    n_classes = data.draw(st.integers(1, 5))
    planes = [data.draw(arrays(np.uint8, (height, width), elements=st.integers(0, 1))) for _ in range(n_classes)]
    stacked = decode_masks([rle_encode(p) for p in planes], (height, width))
    assert stacked.shape == (height, width, n_classes) and stacked.dtype == np.uint8
    assert stacked.flags["C_CONTIGUOUS"]
    assert np.array_equal(stacked, np.stack(planes, axis=-1))


def test_kaggle_convention_is_one_indexed_and_column_major():
    mask = rle_decode("1 3 10 5", (4, 4))
    expected = np.zeros(16, np.uint8)
    expected[0:3] = 1
    expected[9:14] = 1
    assert np.array_equal(mask, expected.reshape(4, 4, order="F"))
    assert mask.dtype == np.uint8 and mask.flags["F_CONTIGUOUS"]  # the RLE's own layout, no copy
    assert rle_encode(mask) == "1 3 10 5"


def test_encode_treats_any_nonzero_as_defect_and_merges_touching_runs():
    mask = np.array([[0.0, 0.7], [2.0, -1.0]])
    assert rle_encode(mask) == "2 3"
    assert rle_encode(np.zeros((3, 5), bool)) == ""
    assert rle_encode(rle_decode("1 2 3 2", (2, 3))) == "1 4"


def test_parse_gives_zero_indexed_starts_and_accepts_any_whitespace():
    starts, lengths = rle_parse(" 1 3\t10  5\n")
    assert starts.tolist() == [0, 9] and lengths.tolist() == [3, 5]
    assert starts.dtype == np.int64 and lengths.dtype == np.int64


@pytest.mark.parametrize("missing", ["", "   ", None, float("nan"), np.nan, pd.NA])
def test_missing_encodings_decode_to_zeros(missing):
    mask = rle_decode(missing, (3, 4))
    assert mask.shape == (3, 4) and mask.dtype == np.uint8 and not mask.any()
    assert rle_decode(missing, (3, 4), columns=(1, 2)).shape == (3, 1)


@pytest.mark.parametrize(
    "rle, message",
    [
        ("1 2 3", "odd number of values (3)"),
        ("1 x", "value 2 ('x') is not an integer"),
        ("1.5 2", "value 1 ('1.5') is not an integer"),
        ("1 2 3 1e3", "value 4 ('1e3') is not an integer"),
        ("0 3", "run 1 starts at 0"),
        ("-4 3", "run 1 starts at -4"),
        ("5 2 9 0", "run 2 (start 9) has length 0"),
        ("5 -2", "run 1 (start 5) has length -2"),
        ("10 2 5 2", "run 2 starts at 5, not after run 1's start 10: runs are not sorted"),
        ("1 5 3 2", "run 2 starts at 3, inside run 1 (pixels 1..5): runs overlap"),
        ("1 99999999999999999999", "value 2 (99999999999999999999) is too large"),
    ],
)
def test_malformed_rle_raises_a_telling_rle_error(rle, message):
    with pytest.raises(RLEError) as caught:
        rle_parse(rle)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(RLEError, match="RLE"):
        rle_decode(rle, (100, 100))


def test_runs_past_the_image_are_refused_by_decode():
    rle_parse("10 7")  # syntax is fine without a shape
    with pytest.raises(RLEError, match=r"run 1 \(start 10, length 7\) ends at pixel 16, past the 15 pixels of a 3x5"):
        rle_decode("10 7", (3, 5))
    with pytest.raises(RLEError, match="past the"):
        rle_decode("10 7", (3, 5), columns=(0, 1))


def test_non_string_encoding_is_refused():
    with pytest.raises(RLEError, match="must be a string, got int"):
        rle_decode(5, (2, 2))


def test_bad_shapes_and_windows_are_programming_errors():
    with pytest.raises(ValueError, match="positive"):
        rle_decode("1 1", (0, 5))
    for window in [(2, 2), (3, 1), (-1, 2), (0, 6)]:
        with pytest.raises(ValueError, match="column window"):
            rle_decode("1 1", (4, 5), columns=window)
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2)))


def test_decode_masks_names_the_class_of_a_bad_string():
    with pytest.raises(RLEError, match=r"class 2: RLE has an odd number"):
        decode_masks(["1 1", "1 2 3", ""], (4, 4))


# -------------------------------------------------------------- real data


def test_pseudo_csv_round_trips_exactly(shared_data):
    annotations = read_rle_csv(shared_data / "severstal" / "pseudo.csv", 4)
    assert len(annotations) == 1801
    assert int(annotations.has_defect().sum()) == 782
    for position, k in np.argwhere(annotations.has_defect()):
        rle = annotations.encodings[position, k]
        assert rle_encode(rle_decode(rle, SEVERSTAL_SHAPE)) == rle


def test_pseudo_csv_crop_decode_matches_full_decode(shared_data):
    annotations = read_rle_csv(shared_data / "severstal" / "pseudo.csv", 4)
    busiest = int(np.argmax(annotations.n_defects()))
    full = annotations.decode(busiest, SEVERSTAL_SHAPE)
    assert full.shape == (256, 1600, 4) and full.any()
    for first in (0, 613, 1200):
        window = annotations.decode(busiest, SEVERSTAL_SHAPE, columns=(first, first + 400))
        assert np.array_equal(window, full[:, first : first + 400])


def test_neu_seg_train_csv_matches_its_label_maps(shared_data):
    root = shared_data / "neu-seg"
    annotations = read_rle_csv(root / "train.csv", 3)
    assert len(annotations) == 3630
    assert int(annotations.has_defect().sum()) == 4337
    for position in (0, 1000, 3629):
        name = annotations.image_ids[position]
        labels = cv2.imread(str(root / "train_masks" / name.replace(".jpg", ".png")), cv2.IMREAD_UNCHANGED)
        expected = np.stack([labels == k for k in (1, 2, 3)], axis=-1).astype(np.uint8)
        assert np.array_equal(annotations.decode(position, labels.shape), expected)


# --------------------------------------------------------------------- CSV


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_current_format_in_any_column_order_with_image_list(tmp_path):
    csv = write_text(tmp_path / "train.csv", "EncodedPixels,ImageId,ClassId\n1 3,b.jpg,2\n5 2,a.jpg,1\n7 1,b.jpg,1\n")
    annotations = read_rle_csv(csv, 3, image_ids=["a.jpg", "b.jpg", "c.jpg"])
    assert annotations.image_ids == ("a.jpg", "b.jpg", "c.jpg")
    assert annotations.encodings.tolist() == [["5 2", "", ""], ["7 1", "1 3", ""], ["", "", ""]]
    assert annotations.rows.tolist() == [[2, 0, 0], [3, 1, 0], [0, 0, 0]]
    assert annotations.n_defects().tolist() == [1, 2, 0]
    assert annotations.ids_not_in(["a.jpg", "b.jpg", "c.jpg"]) == ()
    assert annotations.source == str(csv)


def test_without_image_list_the_ids_are_those_of_the_csv_in_order(tmp_path):
    csv = write_text(tmp_path / "train.csv", "ImageId,ClassId,EncodedPixels\nz.jpg,1,1 1\na.jpg,2,2 1\nz.jpg,2,4 1\n")
    annotations = read_rle_csv(csv, 2)
    assert annotations.image_ids == ("z.jpg", "a.jpg")
    assert annotations.index == {"z.jpg": 0, "a.jpg": 1}


def test_images_in_csv_but_not_on_disk_are_kept_and_reported(tmp_path):
    csv = write_text(tmp_path / "train.csv", "ImageId,ClassId,EncodedPixels\ngone.jpg,1,1 1\nhere.jpg,1,2 1\n")
    annotations = read_rle_csv(csv, 1, image_ids=["here.jpg", "clean.jpg"])
    assert annotations.image_ids == ("here.jpg", "clean.jpg", "gone.jpg")
    assert annotations.ids_not_in(["here.jpg", "clean.jpg"]) == ("gone.jpg",)


def test_original_format_splits_on_the_last_underscore(tmp_path):
    csv = write_text(
        tmp_path / "pseudo.csv",
        "ImageId_ClassId,EncodedPixels\nmy_img.jpg_1,\nmy_img.jpg_2,3 4\n\nother.jpg_1,1 2\nother.jpg_2,\n",
    )
    annotations = read_rle_csv(csv, 2)
    assert annotations.image_ids == ("my_img.jpg", "other.jpg")
    assert annotations.encodings.tolist() == [["", "3 4"], ["1 2", ""]]
    assert annotations.rows[1, 0] == 4  # the blank line still counts as a row


@pytest.mark.parametrize(
    "text, n_classes, message",
    [
        ("Image,Class,Pixels\na.jpg,1,1 1\n", 4, "found columns Image,Class,Pixels, which match no annotation format; "
         "expected ImageId,ClassId,EncodedPixels"),
        ("ImageId,EncodedPixels\na.jpg,1 1\n", 4, "ImageId_ClassId,EncodedPixels (original)"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\nb.jpg,5,1 1\n", 4,
         "row 2 (line 3): ClassId '5' is not an integer in 1..4 (the config key `classes` sets 4 classes)"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,one,1 1\n", 4, "row 1 (line 2): ClassId 'one' is not an integer"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,0,1 1\n", 4, "ClassId '0' is not an integer in 1..4"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_7,\n", 4, "row 2 (line 3): ClassId '7'"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\nnoclass,\n", 4,
         "row 2 (line 3): ImageId_ClassId 'noclass' has no '_<ClassId>' suffix"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\nb.jpg,2,1 1\na.jpg,1,5 1\n", 4,
         "ImageId 'a.jpg' class 1 is listed twice, at row 1 and row 3"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1,\n", 4, "class 1 is listed twice, at row 1 and row 2"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\nb.jpg,1,4 2 1 1\n", 4,
         "row 2 (line 3): EncodedPixels: RLE run 2 starts at 1, not after run 1's start 4"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 1 7\n", 4, "row 1 (line 2): EncodedPixels: RLE has an odd number"),
    ],
)
def test_csv_errors_name_the_file_and_row(tmp_path, text, n_classes, message):
    csv = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as caught:
        read_rle_csv(csv, n_classes)
    assert message in str(caught.value)
    assert str(csv) in str(caught.value)


@pytest.mark.parametrize(
    "image_id, problem",
    [
        ("/etc/passwd", "is an absolute path"),
        ("C:\\data\\a.jpg", "is an absolute path"),
        ("../secret.jpg", "contains a path separator"),
        ("sub/a.jpg", "contains a path separator"),
        ("sub\\a.jpg", "contains a path separator"),
        ("..", "names a directory"),
        (" ", "is empty"),
    ],
)
def test_image_ids_must_be_plain_file_names(tmp_path, image_id, problem):
    csv = write_text(tmp_path / "train.csv", f"ImageId,ClassId,EncodedPixels\nok.jpg,1,1 1\n{image_id},1,1 1\n")
    with pytest.raises(DataError, match=rf"row 2 \(line 3\): ImageId .* {problem}"):
        read_rle_csv(csv, 4)


def test_missing_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataError, match="annotation CSV not found"):
        read_rle_csv(tmp_path / "nope.csv", 4)
    with pytest.raises(DataError, match="is empty"):
        read_rle_csv(write_text(tmp_path / "empty.csv", ""), 4)
    header_only = read_rle_csv(write_text(tmp_path / "h.csv", "ImageId,ClassId,EncodedPixels\n"), 4, ["a.jpg"])
    assert header_only.image_ids == ("a.jpg",) and not header_only.has_defect().any()
    assert header_only.encodings.shape == (1, 4)


def test_out_of_bounds_run_is_reported_with_its_row_at_decode(tmp_path):
    csv = write_text(tmp_path / "train.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,3,15 9\n")
    annotations = read_rle_csv(csv, 3)
    with pytest.raises(RLEError, match=r"train.csv row 2 \(line 3\) \(ImageId 'a.jpg', class 3\): RLE run 1"):
        annotations.decode(0, (4, 4))


def random_annotations(seed, n_images=7, n_classes=4):
    rng = np.random.default_rng(seed)
    ids = tuple(f"{value:09x}.jpg" for value in rng.choice(16**9, n_images, replace=False))
    ids = ids[:-1] + ("odd, name_2.jpg",)  # a comma and an underscore survive every format
    planes = rng.random((n_images, n_classes, 6, 9)) < rng.choice([0.0, 0.3], (n_images, n_classes, 1, 1))
    encodings = np.array([[rle_encode(p) for p in image] for image in planes], dtype=object)
    return Annotations(ids, encodings, np.zeros(encodings.shape, np.int64), "memory")


@pytest.mark.parametrize("fmt", ["train", "submission", "original"])
def test_write_then_read_gives_equal_annotations(tmp_path, fmt):
    annotations = random_annotations(seed=3)
    assert annotations.has_defect().any() and not annotations.has_defect().all()
    path = write_rle_csv(tmp_path / "out" / f"{fmt}.csv", annotations, fmt)
    back = read_rle_csv(path, 4, image_ids=annotations.image_ids if fmt == "train" else None)
    assert back == annotations
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_written_formats_have_the_kaggle_headers_and_rows(tmp_path):
    annotations = Annotations(("a.jpg", "b.jpg"), np.array([["", "1 2"], ["", ""]], dtype=object), np.zeros((2, 2)))
    lines = {fmt: write_rle_csv(tmp_path / fmt, annotations, fmt).read_text().splitlines() for fmt in
             ("train", "submission", "original")}
    assert lines["train"] == ["ImageId,ClassId,EncodedPixels", "a.jpg,2,1 2"]
    assert lines["submission"] == ["ImageId,EncodedPixels,ClassId", "a.jpg,,1", "a.jpg,1 2,2", "b.jpg,,1", "b.jpg,,2"]
    assert lines["original"] == ["ImageId_ClassId,EncodedPixels", "a.jpg_1,", "a.jpg_2,1 2", "b.jpg_1,", "b.jpg_2,"]
    with pytest.raises(ValueError, match="unknown CSV format 'kaggle'; valid: train, submission, original"):
        write_rle_csv(tmp_path / "x.csv", annotations, "kaggle")


# ------------------------------------------------------------- Annotations


def test_annotations_subset_concat_and_equality():
    annotations = random_annotations(seed=5)
    first, rest = annotations.subset(range(3)), annotations.subset(np.arange(7) >= 3)
    assert len(first) == 3 and len(rest) == 4
    assert first.concat(rest) == annotations
    assert annotations.subset([2, 0]).image_ids == (annotations.image_ids[2], annotations.image_ids[0])
    assert annotations.subset([1]) != annotations.subset([2])
    with pytest.raises(DataError, match="is in both"):
        first.concat(annotations)
    with pytest.raises(ValueError, match="4-class and 3-class"):
        first.concat(random_annotations(seed=5, n_classes=3))


def test_annotations_are_frozen_and_consistent():
    annotations = random_annotations(seed=8)
    with pytest.raises(ValueError):
        annotations.encodings[0, 0] = "1 1"
    with pytest.raises(AttributeError):
        annotations.source = "elsewhere"
    with pytest.raises(DataError, match="ImageId 'a.jpg' is listed twice"):
        Annotations(("a.jpg", "a.jpg"), np.full((2, 1), "", object), np.zeros((2, 1)), "x.csv")
    with pytest.raises(ValueError, match="encodings"):
        Annotations(("a.jpg",), np.full((2, 1), "", object), np.zeros((2, 1)))
    assert f"7 images, 4 classes, {int(annotations.n_defects().sum())} masks" in repr(annotations)
