"""The crop-first data path: runs without decoding, the crop policy, window decoding."""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sever.data_loader.annotations import Annotations
from sever.data_loader.augmentation import (
    MIN_IMAGE_SIDE, PAD_LABEL, CropPolicy, HeavyCropTransforms, LightTransforms, MediumTransforms,
)
from sever.data_loader.datasets import SegmentationDataset
from sever.data_loader.rle import decode_runs, mask_runs, rle_encode, rle_parse, union_runs
from sever.data_loader.sources import read_csv_folder
from sever.exceptions import DataError


@st.composite
def class_masks(draw, max_side=10, max_classes=3, min_side=1):
    """A random 0/1 uint8 ``(H, W, C)`` stack of small masks."""
    height, width = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    classes = draw(st.integers(1, max_classes))
    return draw(arrays(np.uint8, (height, width, classes), elements=st.integers(0, 1)))


def runs_of(mask: np.ndarray) -> list:
    return [mask_runs(mask[..., k]) for k in range(mask.shape[2])]


# ----------------------------------------------------------------- runs


@given(class_masks())
def test_mask_runs_are_the_parsed_encoding(mask):
    for k in range(mask.shape[2]):
        starts0, lengths = mask_runs(mask[..., k])
        parsed = rle_parse(rle_encode(mask[..., k]))
        assert np.array_equal(starts0, parsed[0]) and np.array_equal(lengths, parsed[1])


@given(class_masks())
def test_union_of_runs_marks_the_pixels_of_any_class(mask):
    starts0, lengths = union_runs(runs_of(mask))
    expected = mask_runs(mask.any(axis=2))
    assert np.array_equal(starts0, expected[0]) and np.array_equal(lengths, expected[1])


@given(class_masks(), st.data())
def test_window_decoding_equals_slicing_the_full_decode(mask, data):
    first = data.draw(st.integers(0, mask.shape[1] - 1))
    stop = data.draw(st.integers(first + 1, mask.shape[1]))
    runs = runs_of(mask)
    assert np.array_equal(decode_runs(runs, mask.shape[:2]), mask)
    window = decode_runs(runs, mask.shape[:2], (first, stop))
    assert window.flags.c_contiguous and np.array_equal(window, mask[:, first:stop])


def test_union_of_no_runs_is_empty():
    empty = np.zeros(0, np.int64)
    for runs in ([], [(empty, empty), (empty, empty)]):
        starts0, lengths = union_runs(runs)
        assert starts0.size == 0 and lengths.size == 0


# ------------------------------------------------------------ crop policy


@settings(max_examples=80)
@given(class_masks(max_side=24, min_side=MIN_IMAGE_SIDE), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.5, 1.0]),
       st.floats(0.1, 2.0), st.floats(0.1, 2.0))
def test_windows_lie_inside_the_image_or_hold_it_and_hold_the_drawn_defect(mask, seed, probability, tall, wide):
    height, width = mask.shape[:2]
    policy = CropPolicy(max(1, round(height * tall)), max(1, round(width * wide)), probability)
    top, left = policy.window(np.random.default_rng(seed), (height, width), runs_of(mask))
    for start, size, crop in ((top, height, policy.height), (left, width, policy.width)):
        # inside the image where the crop fits, else the whole image inside the window
        assert 0 <= start <= size - crop if crop <= size else size - crop <= start <= 0
    if probability == 1.0 and mask.any():
        assert mask[max(top, 0) : top + policy.height, max(left, 0) : left + policy.width].any()


def test_window_is_a_function_of_the_generator_state():
    mask = np.zeros((40, 60, 2), np.uint8)
    mask[30:33, 50:55, 1] = 1
    policy = CropPolicy(16, 16, 0.5)
    draw = [policy.window(np.random.default_rng(seed), mask.shape[:2], runs_of(mask)) for seed in range(30)]
    again = [policy.window(np.random.default_rng(seed), mask.shape[:2], runs_of(mask)) for seed in range(30)]
    assert draw == again and len(set(draw)) > 10


def marginals(windows: list[tuple[int, int]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    tops, lefts = np.array(windows).T
    return np.bincount(tops, minlength=height) / len(windows), np.bincount(lefts, minlength=width) / len(windows)


def test_defect_crops_follow_albumentations_crop_non_empty_mask_if_exists():
    """Same distribution of windows as albumentations 2.0.8's transform, on a mask with two classes."""
    mask = np.zeros((16, 40, 2), np.uint8)
    mask[2:4, 3:5, 0] = 1  # 4 pixels near a corner
    mask[10:16, 24:36, 1] = 1  # 72 pixels: drawn 18 times as often
    mask[12, 30, 0] = 1  # overlapping the other class: counted once
    height, width, draws = 8, 10, 4000
    policy = CropPolicy(height, width, defect_probability=1.0)
    rng = np.random.default_rng(0)
    ours = [policy.window(rng, mask.shape[:2], runs_of(mask)) for _ in range(draws)]
    reference = A.Compose([A.CropNonEmptyMaskIfExists(height, width)], seed=0)
    theirs = []
    for _ in range(draws):
        params = reference.transforms[0].get_params_dependent_on_data({}, {"mask": mask})
        left, top = params["crop_coords"][:2]
        theirs.append((int(top), int(left)))
    for our, their in zip(marginals(ours, 9, 31), marginals(theirs, 9, 31)):
        assert 0.5 * np.abs(our - their).sum() < 0.06  # total variation; sampling noise is about 0.02


@pytest.mark.parametrize("mode, value", [("constant", 7), ("reflect", 0)])
def test_a_crop_larger_than_the_image_pads_image_and_mask(mode, value):
    image = np.arange(40 * 24, dtype=np.uint16).reshape(40, 24, 1).astype(np.uint8)
    mask = np.zeros((40, 24, 2), np.uint8)
    mask[5:9, 3:6, 1] = 1
    policy = CropPolicy(32, 64, pad_mode=mode, pad_value=value)
    top, left = 4, -30  # rows 4..35 of the image; its 24 columns from column 30 of the window
    crop, cropped = policy.cut(image, mask, top, left)
    assert crop.shape == (32, 64, 1) and cropped.shape == (32, 64, 2)
    assert np.array_equal(crop[:, 30:54], image[4:36]) and np.array_equal(cropped[:, 30:54], mask[4:36])
    assert (cropped[:, :30] == PAD_LABEL).all() and (cropped[:, 54:] == PAD_LABEL).all()
    if mode == "constant":
        assert (crop[:, :30] == value).all() and (crop[:, 54:] == value).all()
    else:  # mirrored about the edge columns, which are not repeated
        assert np.array_equal(crop[:, 29], image[4:36, 1]) and np.array_equal(crop[:, 54], image[4:36, 22])


def test_an_image_below_the_minimum_side_is_a_data_error():
    with pytest.raises(DataError, match=f"a 64x{MIN_IMAGE_SIDE - 1} image is too small to train on"):
        CropPolicy(64, 96).window(np.random.default_rng(0), (64, MIN_IMAGE_SIDE - 1), [])


def test_sets_expose_their_crop_policy():
    assert HeavyCropTransforms(64, 96).crop_policy == CropPolicy(64, 96, 0.5)
    assert LightTransforms(64, 96).crop_policy == CropPolicy(64, 96, 0.0)
    assert MediumTransforms().crop_policy is None
    assert HeavyCropTransforms(64, 96).build(train=False).crop is None


# ---------------------------------------------------------------- dataset

SETS = [lambda: HeavyCropTransforms(32, 96), lambda: LightTransforms(32, 96), lambda: MediumTransforms(32, 64)]


@pytest.mark.parametrize("make", SETS)
def test_crop_first_dataset_equals_the_pipeline_on_full_arrays(demo_dir, make):
    annotations, paths = read_csv_folder(demo_dir / "train_images", demo_dir / "train.csv", 4)
    pipeline = make().build(train=True)
    dataset = SegmentationDataset(paths, annotations, pipeline)
    for index in range(len(dataset)):
        seed = 1000 + index
        image, mask = dataset[(index, seed)]
        full_image, full_mask = dataset.load(index)
        pipeline.set_random_seed(seed)
        expected = pipeline(image=full_image, mask=full_mask)
        assert torch.equal(image, expected["image"]) and torch.equal(mask, expected["mask"])


def test_heavy_crops_seek_defects_in_the_dataset(demo_dir):
    annotations, paths = read_csv_folder(demo_dir / "train_images", demo_dir / "train.csv", 4)
    keep = annotations.n_defects() > 0
    annotations = annotations.subset(keep)
    paths = [path for path, kept in zip(paths, keep) if kept]
    hits = {}
    for name, transforms in (("heavy", HeavyCropTransforms(32, 32)), ("light", LightTransforms(32, 32))):
        dataset = SegmentationDataset(paths, annotations, transforms.build(train=True))
        hits[name] = np.mean([bool(dataset[(i, seed)][1].any()) for i in range(len(dataset)) for seed in range(8)])
    assert hits["heavy"] > hits["light"] + 0.15


def test_an_image_too_small_to_pad_is_named(tmp_path):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((1, 256), np.uint8))
    annotations = Annotations(("small.png",), np.array([["1 1", ""]], dtype=object), np.ones((1, 2)), "t.csv")
    dataset = SegmentationDataset([path], annotations, HeavyCropTransforms(64, 64).build(train=True))
    with pytest.raises(DataError, match=r"small\.png: a 1x256 image is too small to train on"):
        dataset[(0, 1)]


@pytest.mark.parametrize("make, keeps_area", list(zip(SETS, [True, True, False])))  # Medium's affine rescales
def test_small_images_pad_the_same_on_the_crop_first_path_and_on_full_arrays(tmp_path, make, keeps_area):
    """Images smaller than the crop on one or both axes: the dataset's window-only decoding equals
    the pipeline on full arrays, and exactly the padded pixels carry PAD_LABEL."""
    rng = np.random.default_rng(3)
    sizes = [(20, 50), (40, 30), (24, 200), (9, 9)]
    names = [f"{n}.png" for n in range(len(sizes))]
    for name, (height, width) in zip(names, sizes):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (height, width), dtype=np.uint8))
    masks = [np.pad(np.ones((4, 3, 1), np.uint8), ((2, h - 6), (1, w - 4), (0, 0))) for h, w in sizes]
    rles = np.array([[rle_encode(m[..., 0]), ""] for m in masks], dtype=object)
    annotations = Annotations(tuple(names), rles, np.ones((len(names), 2)), "t.csv")
    pipeline = make().build(train=True)
    dataset = SegmentationDataset([tmp_path / name for name in names], annotations, pipeline)
    crop = pipeline.crop
    for index, (height, width) in enumerate(sizes):
        for seed in range(6):
            image, mask = dataset[(index, seed)]
            full_image, full_mask = dataset.load(index)
            pipeline.set_random_seed(seed)
            expected = pipeline(image=full_image, mask=full_mask)
            assert torch.equal(image, expected["image"]) and torch.equal(mask, expected["mask"])
            padded = int((mask[0] == PAD_LABEL).sum())
            own = min(height, crop.height) * min(width, crop.width)
            assert padded == crop.height * crop.width - own or not keeps_area  # flips move the padding
            assert ((mask == PAD_LABEL).all(0) == (mask[0] == PAD_LABEL)).all()  # every class channel agrees
