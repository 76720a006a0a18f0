"""Augmentation sets: shapes, seeding, image/mask alignment, crops; the normalisation of their images."""

import cv2
import numpy as np
import pytest
import torch

from sever.exceptions import ConfigError, DataError
from sever.data_loader.augmentation import (
    GRAY_MEAN,
    GRAY_STD,
    TRANSFORMS,
    HeavyCropTransforms,
    LightTransforms,
    MediumTransforms,
    Normalization,
)

SETS = {
    "heavy": lambda: HeavyCropTransforms(64, 96),
    "medium-crop": lambda: MediumTransforms(64, 96),
    "medium-full": lambda: MediumTransforms(),
    "light-crop": lambda: LightTransforms(64, 96),
}
BACKGROUND, PAINT = 60, 200


def painted_sample() -> tuple[np.ndarray, np.ndarray]:
    """A (128, 192) image with bright asymmetric shapes, and a (128, 192, 4) mask marking them."""
    image = np.full((128, 192), BACKGROUND, np.uint8)
    mask = np.zeros((128, 192, 4), np.uint8)
    for channel, rows, cols in [(0, (20, 50), (30, 40)), (0, (40, 50), (40, 90)), (2, (80, 110), (120, 170))]:
        image[slice(*rows), slice(*cols)] = PAINT
        mask[slice(*rows), slice(*cols), channel] = 1
    return image, mask


def aligned(image: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether the bright pixels of ``image (1, h, w)`` are those ``mask (C, h, w)`` marks.

    Filters (blur, sharpen, resampling) may change the pattern's edge pixels, so
    the mask's interior must be bright and everything beyond its 1-pixel border dark.
    """
    values = image[0].numpy()
    marked = mask.numpy().max(axis=0)
    spread = values.max() - values.min()
    bright = values > values.min() + spread / 2 if spread > 1e-3 else np.zeros(values.shape, bool)
    kernel = np.ones((3, 3), np.uint8)
    interior = cv2.erode(marked, kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    halo = cv2.dilate(marked, kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return bool(bright[interior].all() and not bright[~halo].any())


def run(pipeline, seed: int, image: np.ndarray, mask: np.ndarray) -> dict:
    pipeline.set_random_seed(seed)
    return pipeline(image=image, mask=mask)


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("channel_axis", [False, True])
def test_training_output_shapes_and_dtypes(name, channel_axis):
    transforms = SETS[name]()
    image, mask = painted_sample()
    out = run(transforms.build(train=True), 0, image[..., None] if channel_axis else image, mask)
    height, width = transforms.crop_size or image.shape
    assert out["image"].shape == (1, height, width) and out["image"].dtype == torch.uint8
    assert out["mask"].shape == (4, height, width) and out["mask"].dtype == torch.uint8
    assert set(out["mask"].unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("name", SETS)
def test_evaluation_keeps_the_full_image_unchanged(name):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    mask = rng.integers(0, 2, (200, 200, 4), dtype=np.uint8)
    out = SETS[name]().build(train=False)(image=image, mask=mask)
    assert torch.equal(out["image"], torch.from_numpy(image)[None])
    assert torch.equal(out["mask"], torch.from_numpy(mask.transpose(2, 0, 1)))


@pytest.mark.parametrize("mean, std", [(GRAY_MEAN, GRAY_STD), (0.5, 0.25)])
def test_normalization_gives_standard_scores_of_the_sets_statistics(mean, std):
    images = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    out = LightTransforms(mean=mean, std=std).normalization(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out.double(), (images.double() / 255 - mean) / std, atol=1e-4, rtol=0)


def test_normalization_keeps_the_memory_format_and_never_writes_its_input():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    out = Normalization(0.5, 0.25)(images)
    assert out.is_contiguous(memory_format=torch.channels_last)
    floats = images.float()
    kept = floats.clone()
    Normalization(0.5, 0.25)(floats)
    assert torch.equal(floats, kept)


@pytest.mark.parametrize("name", SETS)
def test_same_seed_same_output_different_seed_different_crop(name):
    pipeline = SETS[name]().build(train=True)
    image, mask = painted_sample()
    image = image + np.random.default_rng(1).integers(0, 20, image.shape, dtype=np.uint8)  # no two crops alike
    first, again = run(pipeline, 11, image, mask), run(pipeline, 11, image, mask)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    others = [run(pipeline, seed, image, mask)["image"] for seed in range(12, 20)]
    assert sum(not torch.equal(first["image"], other) for other in others) >= 6


def test_a_second_pipeline_built_alike_gives_the_same_output():
    image, mask = painted_sample()
    first = run(HeavyCropTransforms(64, 96).build(True), 5, image, mask)
    second = run(HeavyCropTransforms(64, 96).build(True), 5, image, mask)
    assert torch.equal(first["image"], second["image"])


def test_flips_are_seeded_independently():
    pipeline = MediumTransforms(brightness_limit=0, contrast_limit=0, shift_limit=0, scale_limit=0).build(True)
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    combos = set()
    for seed in range(40):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image)["image"][0].numpy()
        combos.add((bool(out[0, 0] in (image[0, -1], image[-1, -1])), bool(out[0, 0] in (image[-1, 0], image[-1, -1]))))
    assert combos == {(False, False), (True, False), (False, True), (True, True)}


def test_alignment_check_detects_a_shifted_mask():
    image, mask = painted_sample()
    out = LightTransforms().build(train=False)(image=image, mask=mask)
    assert aligned(out["image"], out["mask"])
    assert not aligned(out["image"], torch.roll(out["mask"], shifts=3, dims=2))


@pytest.mark.parametrize("name", SETS)
def test_mask_stays_aligned_with_the_image(name):
    pipeline = SETS[name]().build(train=True)
    image, mask = painted_sample()
    outputs = [run(pipeline, seed, image, mask) for seed in range(40)]
    assert all(aligned(out["image"], out["mask"]) for out in outputs)
    assert sum(bool(out["mask"].any()) for out in outputs) >= 20  # the check saw the pattern
    assert all(not out["mask"][[1, 3]].any() for out in outputs)  # channels keep their class


def test_heavy_crops_seek_defects():
    image = np.full((128, 640), BACKGROUND, np.uint8)
    mask = np.zeros((128, 640, 4), np.uint8)
    mask[100:104, 500:504, 3] = 1
    heavy, light = HeavyCropTransforms(64, 96).build(True), LightTransforms(64, 96).build(True)
    hits = {
        name: np.mean([bool(run(p, seed, image, mask)["mask"].any()) for seed in range(200)])
        for name, p in (("heavy", heavy), ("light", light))
    }
    # Heavy: half onto the defect (always hits) + half random (about 1 in 13): 0.54 expected.
    assert hits["heavy"] > 0.45 and hits["light"] < 0.3
    assert hits["heavy"] > hits["light"] + 0.3


@pytest.mark.parametrize(
    "make",
    [
        lambda: HeavyCropTransforms(100, 96),
        lambda: HeavyCropTransforms(64, 0),
        lambda: MediumTransforms(-32, 64),
        lambda: LightTransforms(64, 96.0),
        lambda: LightTransforms(64, None),
    ],
)
def test_crop_sizes_must_be_positive_multiples_of_32(make):
    with pytest.raises(ValueError, match="positive multiple of 32"):
        make()


def test_other_invalid_parameters():
    with pytest.raises(TypeError):
        HeavyCropTransforms()
    with pytest.raises(ValueError, match="std must be positive"):
        LightTransforms(std=0)
    with pytest.raises(ValueError, match=r"scale_limit must be in \[0, 1\)"):
        MediumTransforms(scale_limit=1.5)


def test_crop_size_is_exposed():
    assert HeavyCropTransforms(256, 416).crop_size == (256, 416)
    assert MediumTransforms().crop_size is None
    assert LightTransforms(32, 64).crop_size == (32, 64)


@pytest.mark.parametrize("image", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32), np.zeros(8, np.uint8)])
def test_non_grayscale_input_is_a_data_error(image):
    with pytest.raises(DataError, match="uint8 grayscale"):
        LightTransforms().build(train=False)(image=image)


def test_sets_build_from_config_blocks():
    assert {"HeavyCropTransforms", "MediumTransforms", "LightTransforms"} <= set(TRANSFORMS.names())
    transforms = TRANSFORMS.build({"type": "HeavyCropTransforms", "args": {"height": 256, "width": 416}}, "aug")
    assert transforms.crop_size == (256, 416)
    with pytest.raises(ConfigError, match="aug: cannot build augmentation 'LightTransforms'.*multiple of 32"):
        TRANSFORMS.build({"type": "LightTransforms", "args": {"height": 200, "width": 200}}, "aug")
