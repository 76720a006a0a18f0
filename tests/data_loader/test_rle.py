"""The RLE codec (data_loader/rle.py) by its public behaviour: exact pixels, round trips, windows, errors.

Fast and deterministic (seeded numpy masks instead of hypothesis), so that mutation testing
(tools/mutation.py) can run it for every mutant. Nothing here depends on how a function decodes,
only on what it returns or raises.
"""

import math

import numpy as np
import pandas as pd
import pytest

from sever.data_loader.rle import (
    class_runs,
    column_planes,
    decode_masks,
    decode_runs,
    mask_runs,
    rle_decode,
    rle_encode,
    rle_parse,
    stack_column_planes,
    union_runs,
)
from sever.exceptions import RLEError

# "2 4 13 3" on a 3x5 mask: pixels 2..5 and 13..15, numbered down the columns from 1.
SMALL_RLE = "2 4 13 3"
SMALL_MASK = np.array(
    [
        [0, 1, 0, 0, 1],
        [1, 1, 0, 0, 1],
        [1, 0, 0, 0, 1],
    ],
    dtype=np.uint8,
)


def random_masks(count=150, seed=0, max_side=9):
    """Seeded 0/1 masks of random shapes and densities (empty and full ones included)."""
    rng = np.random.default_rng(seed)
    masks = [np.zeros((3, 4), np.uint8), np.ones((4, 3), np.uint8), np.ones((1, 1), np.uint8)]
    for _ in range(count):
        shape = tuple(rng.integers(1, max_side + 1, 2))
        masks.append((rng.random(shape) < rng.uniform(0.05, 0.95)).astype(np.uint8))
    return masks


def runs_as_lists(runs):
    return [array.tolist() for array in runs]


# ---------------------------------------------------------------- exact pixels


def test_decode_numbers_pixels_down_the_columns_from_one():
    mask = rle_decode(SMALL_RLE, (3, 5))
    assert mask.dtype == np.uint8 and mask.shape == (3, 5)
    assert np.array_equal(mask, SMALL_MASK)
    assert rle_encode(SMALL_MASK) == SMALL_RLE


def test_a_run_may_end_on_the_last_pixel_but_not_past_it():
    assert np.array_equal(rle_decode("1 15", (3, 5)), np.ones((3, 5), np.uint8))
    last = np.zeros((3, 5), np.uint8)
    last[2, 4] = 1
    assert np.array_equal(rle_decode("15 1", (3, 5)), last)
    assert rle_decode("1 1 14 2", (3, 5))[:, 4].tolist() == [0, 1, 1]
    with pytest.raises(RLEError) as error:
        rle_decode("1 1 14 2", (2, 7))
    assert str(error.value) == "RLE run 2 (start 14, length 2) ends at pixel 15, past the 14 pixels of a 2x7 mask"


@pytest.mark.parametrize("columns, expected", [
    ((0, 1), [[0], [1], [1]]),
    ((1, 3), [[1, 0], [1, 0], [0, 0]]),
    ((2, 4), [[0, 0], [0, 0], [0, 0]]),  # between the runs
    ((3, 5), [[0, 1], [0, 1], [0, 1]]),
    ((4, 5), [[1], [1], [1]]),
    ((0, 5), SMALL_MASK.tolist()),
])
def test_a_column_window_decodes_exactly_those_columns(columns, expected):
    window = rle_decode(SMALL_RLE, (3, 5), columns=columns)
    assert window.dtype == np.uint8 and window.tolist() == expected


def test_windows_cut_runs_that_start_before_and_end_after_them():
    rle = "3 9"  # one run over pixels 3..11 of a 2x6 mask: columns 1..5, part of 1 and 5
    full = rle_decode(rle, (2, 6))
    assert full.tolist() == [[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]]
    assert rle_decode(rle, (2, 6), columns=(2, 4)).tolist() == [[1, 1], [1, 1]]
    assert rle_decode(rle, (2, 6), columns=(5, 6)).tolist() == [[1], [0]]
    # pixels 1-2 (column 0), 6 (column 2), 10-11 (columns 4 and 5): the window ends inside the last run
    assert rle_decode("1 2 6 1 10 2", (2, 6), columns=(1, 5)).tolist() == [[0, 0, 0, 0], [0, 1, 0, 1]]
    assert rle_decode("2 1 11 2", (2, 6), columns=(1, 5)).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("missing", ["", " \t\n", None, float("nan"), np.float64("nan"), pd.NA])
def test_missing_encodings_are_empty_masks_and_empty_runs(missing):
    assert rle_decode(missing, (2, 3)).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert rle_decode(missing, (2, 3), columns=(1, 3)).tolist() == [[0, 0], [0, 0]]
    starts, lengths = rle_parse(missing)
    assert starts.tolist() == lengths.tolist() == [] and starts.dtype == lengths.dtype == np.int64
    assert decode_masks([missing, "1 1"], (2, 3))[..., 0].tolist() == [[0, 0, 0], [0, 0, 0]]


def test_parse_returns_zero_indexed_starts_and_lengths():
    starts, lengths = rle_parse("+2 4 13 3")  # an explicit plus sign is still an integer
    assert starts.tolist() == [1, 12] and lengths.tolist() == [4, 3]
    assert starts.dtype == lengths.dtype == np.int64
    touching = rle_parse("5 3 8 1")  # the second run starts right after the first: allowed
    assert runs_as_lists(touching) == [[4, 7], [3, 1]]


def test_the_largest_accepted_value_is_two_to_the_61():
    assert rle_parse(f"1 {2**61}")[1].tolist() == [2**61]
    assert rle_parse(f"1\t{2**61}")[1].tolist() == [2**61]  # the same with other whitespace
    assert rle_parse(f"+1 {2**61}")[1].tolist() == [2**61]
    with pytest.raises(RLEError) as error:
        rle_parse(f"1 {2**61 + 1}")
    assert str(error.value) == f"RLE value 2 ({2**61 + 1}) is too large to be a pixel number"
    with pytest.raises(RLEError) as error:
        rle_parse(f"1 1 -{2**61 + 1} 3")
    assert str(error.value) == f"RLE value 3 (-{2**61 + 1}) is too large to be a pixel number"


# ---------------------------------------------------------------- round trips


def test_encode_and_decode_are_inverse_on_random_masks():
    for mask in random_masks():
        rle = rle_encode(mask)
        assert np.array_equal(rle_decode(rle, mask.shape), mask), rle
        assert rle_encode(rle_decode(rle, mask.shape)) == rle
        assert runs_as_lists(mask_runs(mask)) == runs_as_lists(rle_parse(rle))
        assert int(rle_parse(rle)[1].sum()) == int(mask.sum())


def test_windows_equal_slices_of_the_whole_mask_on_random_masks():
    rng = np.random.default_rng(1)
    for mask in random_masks(seed=2):
        width = mask.shape[1]
        first = int(rng.integers(0, width))
        stop = int(rng.integers(first + 1, width + 1))
        rle = rle_encode(mask)
        assert np.array_equal(rle_decode(rle, mask.shape, columns=(first, stop)), mask[:, first:stop])
        assert np.array_equal(decode_masks([rle, ""], mask.shape, columns=(first, stop))[..., 0], mask[:, first:stop])


def test_stacked_decoders_agree_with_the_masks_of_every_class():
    rng = np.random.default_rng(3)
    for _ in range(40):
        height, width, classes = (int(n) for n in rng.integers(1, 8, 3))
        planes = (rng.random((classes, height, width)) < rng.uniform(0.1, 0.9)).astype(np.uint8)
        planes[rng.random(classes) < 0.3] = 0  # some classes without defects
        expected = np.moveaxis(planes, 0, -1)
        encodings = [rle_encode(plane) for plane in planes]
        stacked = decode_masks(encodings, (height, width))
        assert stacked.dtype == np.uint8 and stacked.shape == (height, width, classes)
        assert np.array_equal(stacked, expected)
        runs = class_runs(encodings, (height, width), str)
        assert np.array_equal(decode_runs(runs, (height, width)), expected)
        first = int(rng.integers(0, width))
        stop = int(rng.integers(first + 1, width + 1))
        assert np.array_equal(decode_runs(runs, (height, width), columns=(first, stop)), expected[:, first:stop])
        marked = [k for k in range(classes) if planes[k].any()]
        columns = column_planes(runs, (height, width))
        assert columns.shape == (len(marked), width, height)
        assert np.array_equal(columns, planes[marked].transpose(0, 2, 1))
        with_gaps = [columns[marked.index(k)] if k in marked else None for k in range(classes)]
        assert np.array_equal(stack_column_planes(with_gaps, height, width), expected)
        assert np.array_equal(stack_column_planes([p[first:stop] if p is not None else None for p in with_gaps],
                                                  height, stop - first), expected[:, first:stop])


def test_union_runs_are_the_runs_of_the_union_mask():
    rng = np.random.default_rng(4)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 9, 2))
        planes = (rng.random((int(rng.integers(0, 5)), *shape)) < rng.uniform(0.05, 0.6)).astype(np.uint8)
        union = planes.any(axis=0) if len(planes) else np.zeros(shape, bool)
        merged = union_runs([mask_runs(plane) for plane in planes])
        assert runs_as_lists(merged) == runs_as_lists(mask_runs(union))


def test_union_of_touching_and_nested_runs_is_one_run():
    a = (np.array([0, 10]), np.array([3, 2]))  # pixels 0..2 and 10..11
    b = (np.array([3]), np.array([4]))  # 3..6: touches a's first run
    c = (np.array([9]), np.array([5]))  # 9..13: holds a's second run
    assert runs_as_lists(union_runs([a, b, c])) == [[0, 9], [7, 5]]
    assert runs_as_lists(union_runs([c, a])) == [[0, 9], [3, 5]]
    assert runs_as_lists(union_runs([a])) == [[0, 10], [3, 2]]
    touching = rle_parse("5 3 8 1")  # one mask's runs come back as they are, touching or not
    assert runs_as_lists(union_runs([touching])) == [[4, 7], [3, 1]]
    assert runs_as_lists(union_runs([touching, (np.array([20]), np.array([1]))])) == [[4, 20], [4, 1]]
    assert runs_as_lists(union_runs([(np.zeros(0, np.int64), np.zeros(0, np.int64)), b])) == [[3], [4]]
    empty = union_runs([])
    assert runs_as_lists(empty) == [[], []] and empty[0].dtype == empty[1].dtype == np.int64


def test_encode_reads_any_dtype_and_memory_layout():
    mask = np.array([[0.0, 0.7, 0.0], [2.0, -1.0, 0.0]])  # nonzero is defect
    assert rle_encode(mask) == "2 3"
    assert rle_encode(np.asfortranarray(mask)) == "2 3"
    assert rle_encode(mask.astype(bool)) == "2 3"
    wide = np.zeros((3, 8), np.int32)
    wide[:, 2] = 7
    wide[0, 6] = 1
    assert rle_encode(wide[:, ::2]) == "4 3 10 1"  # a strided view: columns 0, 2, 4, 6
    assert runs_as_lists(mask_runs(wide.T.T)) == [[6, 18], [3, 1]]
    assert rle_encode(np.zeros((2, 2), np.uint8)) == ""


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("rle, message", [
    ("1 2 3", "RLE has an odd number of values (3); expected 'start length' pairs"),
    ("1 x", "RLE value 2 ('x') is not an integer"),
    ("1.5 2", "RLE value 1 ('1.5') is not an integer"),
    ("1 99999999999999999999", "RLE value 2 (99999999999999999999) is too large to be a pixel number"),
    ("0 3", "RLE run 1 starts at 0; starts are 1-indexed and must be >= 1"),
    ("5 1 -4 3", "RLE run 2 starts at -4; starts are 1-indexed and must be >= 1"),
    ("5 2 9 0", "RLE run 2 (start 9) has length 0; lengths must be >= 1"),
    ("5 2 9 0 12 -1", "RLE run 2 (start 9) has length 0; lengths must be >= 1"),
    ("10 2 5 2", "RLE run 2 starts at 5, not after run 1's start 10: runs are not sorted"),
    ("1 1 5 3 5 1", "RLE run 3 starts at 5, not after run 2's start 5: runs are not sorted"),
    ("1 1 5 3 7 1", "RLE run 3 starts at 7, inside run 2 (pixels 5..7): runs overlap"),
    ("1 2 3 1 3 1", "RLE run 3 starts at 3, not after run 2's start 3: runs are not sorted"),  # 2 touches 1: fine
])
def test_malformed_strings_are_rle_errors_that_say_what_is_wrong(rle, message):
    for decode in (rle_parse, lambda text: rle_decode(text, (100, 100))):
        with pytest.raises(RLEError) as error:
            decode(rle)
        assert str(error.value) == message


@pytest.mark.parametrize("value, message", [
    (5, "RLE must be a string, got int 5"),
    (1.5, "RLE must be a string, got float 1.5"),
    (math.inf, "RLE must be a string, got float inf"),
    (b"1 2", "RLE must be a string, got bytes b'1 2'"),
])
def test_encodings_that_are_not_strings_are_refused(value, message):
    with pytest.raises(RLEError) as error:
        rle_decode(value, (2, 2))
    assert str(error.value) == message


def test_out_of_bounds_runs_are_refused_with_or_without_a_window():
    for columns in (None, (0, 1)):
        with pytest.raises(RLEError) as error:
            rle_decode("1 1 10 7", (3, 5), columns=columns)
        assert str(error.value) == "RLE run 2 (start 10, length 7) ends at pixel 16, past the 15 pixels of a 3x5 mask"


def test_class_errors_are_prefixed_by_the_description_of_the_class():
    with pytest.raises(RLEError) as error:
        decode_masks(["1 1", "0 1", ""], (2, 2))
    assert str(error.value) == "class 2: RLE run 1 starts at 0; starts are 1-indexed and must be >= 1"
    with pytest.raises(RLEError) as error:
        decode_masks(["4 2"], (2, 2))
    assert str(error.value) == "class 1: RLE run 1 (start 4, length 2) ends at pixel 5, past the 4 pixels of a 2x2 mask"
    with pytest.raises(RLEError) as error:
        class_runs(["", "1 2 3"], (2, 2), lambda k: f"row {k + 7}")
    assert str(error.value) == "row 8: RLE has an odd number of values (3); expected 'start length' pairs"


@pytest.mark.parametrize("call, message", [
    (lambda: rle_decode("1 1", (0, 5)), "mask shape must be positive, got (0, 5)"),
    (lambda: rle_decode("1 1", (5, 0)), "mask shape must be positive, got (5, 0)"),
    (lambda: decode_masks(["1 1"], (4, -1)), "mask shape must be positive, got (4, -1)"),
    (lambda: rle_decode("1 1", (4, 5), columns=(2, 2)), "column window (2, 2) is not inside 0..5 with c0 < c1"),
    (lambda: rle_decode("1 1", (4, 5), columns=(3, 1)), "column window (3, 1) is not inside 0..5 with c0 < c1"),
    (lambda: rle_decode("1 1", (4, 5), columns=(-1, 2)), "column window (-1, 2) is not inside 0..5 with c0 < c1"),
    (lambda: decode_masks(["1 1"], (4, 5), columns=(0, 6)), "column window (0, 6) is not inside 0..5 with c0 < c1"),
    (lambda: decode_runs([], (4, 5)), "decode_runs needs the runs of at least one class"),
    (lambda: rle_encode(np.zeros((2, 2, 2))), "expected a 2-D (H, W) mask, got shape (2, 2, 2)"),
    (lambda: mask_runs(np.zeros(4)), "expected a 2-D (H, W) mask, got shape (4,)"),
])
def test_bad_shapes_and_windows_are_value_errors_with_the_values(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message and not isinstance(error.value, RLEError)


def test_the_smallest_masks_and_windows_work():
    assert rle_decode("1 1", (1, 1)).tolist() == [[1]]
    assert rle_decode("1 1", (1, 2), columns=(1, 2)).tolist() == [[0]]
    assert rle_decode("2 1", (1, 2), columns=(1, 2)).tolist() == [[1]]
    assert decode_masks(["1 1", ""], (1, 1)).tolist() == [[[1, 0]]]


def test_a_mask_of_more_runs_than_the_cached_zero_one_pattern_decodes_exactly():
    """3,000 one-pixel runs: more than the 2,047 the precomputed 0/1 values cover, so they are made anew."""
    height, width = 100, 100
    flat = np.zeros(height * width, np.uint8)
    flat[0:6000:2] = 1
    rle = " ".join(f"{start + 1} 1" for start in range(0, 6000, 2))
    expected = flat.reshape(width, height).T  # the pixels are numbered down the columns
    assert np.array_equal(rle_decode(rle, (height, width)), expected)
    assert rle_encode(expected) == rle
