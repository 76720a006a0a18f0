"""The mask-folder format: label maps and per-class masks, thresholding, errors, the loader option."""

import cv2
import numpy as np
import pytest
from mask_folders import NAMES, SIZES, make_label_maps, write_dataset

from sever.data_loader.augmentation import LightTransforms
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.mask_folder import binarise, read_mask, read_mask_folder, write_mask_folder
from sever.data_loader.rle import rle_decode
from sever.exceptions import ConfigError, DataError


def decoded(annotations, i, shape):
    return np.stack([rle_decode(rle, shape) for rle in annotations.encodings[i]], axis=2)


@pytest.mark.parametrize("layout", ["labels", "per-class"])
def test_both_layouts_read_the_masks_that_were_drawn(tmp_path, layout):
    masks = make_label_maps(np.random.default_rng(0), overlap=layout == "per-class")
    root = write_dataset(tmp_path, masks, layout, names=NAMES)
    annotations, paths = read_mask_folder(root / "images", root / "masks", 3, NAMES)
    assert annotations.image_ids == tuple(f"img{i}.jpg" for i in range(len(SIZES)))
    assert [p.name for p in paths] == list(annotations.image_ids)
    for i, mask in enumerate(masks):
        assert np.array_equal(decoded(annotations, i, mask.shape[:2]), mask)


def test_per_class_folders_default_to_class_numbers(tmp_path):
    masks = make_label_maps(np.random.default_rng(1), overlap=True)
    root = write_dataset(tmp_path, masks, "per-class", image_ext=".png")
    annotations, _ = read_mask_folder(root / "images", root / "masks", 3)
    assert all(np.array_equal(decoded(annotations, i, m.shape[:2]), m) for i, m in enumerate(masks))


def test_soft_masks_are_thresholded_at_half_scale(tmp_path):
    soft = np.array([[0, 1, 127, 128], [200, 255, 3, 0]], np.uint8)
    assert binarise(soft).tolist() == [[0, 0, 0, 1], [1, 1, 0, 0]]
    assert binarise(np.array([[0, 1]], np.uint8)).tolist() == [[0, 1]]  # 0/1 masks are kept as they are
    assert binarise(np.array([[0, 32767, 32768]], np.uint16)).tolist() == [[0, 0, 1]]
    # A JPEG-damaged 0/255 mask read from disk: the threshold recovers the square.
    square = np.zeros((32, 32), np.uint8)
    square[5:21, 9:27] = 255
    path = tmp_path / "m.jpg"
    cv2.imwrite(str(path), square, [cv2.IMWRITE_JPEG_QUALITY, 50])
    damaged = read_mask(path)
    assert len(np.unique(damaged)) > 2
    assert np.array_equal(binarise(damaged), square // 255)


def test_write_then_read_is_exact_in_both_layouts(tmp_path):
    masks = make_label_maps(np.random.default_rng(2))
    root = write_dataset(tmp_path / "a", masks, "labels")
    annotations, _ = read_mask_folder(root / "images", root / "masks", 3)
    for layout in ("labels", "per-class"):
        out = write_mask_folder(annotations, root / "images", tmp_path / layout, layout, NAMES)
        assert read_mask_folder(root / "images", out, 3, NAMES)[0] == annotations


def test_overlapping_classes_cannot_be_a_label_map(tmp_path):
    mask = np.zeros((40, 64, 3), np.uint8)
    mask[5:10, 5:10, 0] = mask[8:12, 8:12, 2] = 1
    root = write_dataset(tmp_path / "a", [mask], "per-class", names=NAMES)
    annotations, _ = read_mask_folder(root / "images", root / "masks", 3, NAMES)
    with pytest.raises(DataError, match=r"img0.jpg: classes inclusion and scratches overlap at 4 pixel.*per-class"):
        write_mask_folder(annotations, root / "images", tmp_path / "out", "labels", NAMES)


def test_errors_name_the_file(tmp_path):
    masks = make_label_maps(np.random.default_rng(3))
    root = write_dataset(tmp_path, masks, "labels")
    images, mask_dir = root / "images", root / "masks"
    with pytest.raises(DataError, match="mask folder not found"):
        read_mask_folder(images, root / "nope", 3)
    cv2.imwrite(str(mask_dir / "img1.png"), np.full((48, 48), 255, np.uint8))
    with pytest.raises(DataError, match=r"img1.png: label value 255 is not a class number 0..3.*masks/<class>/"):
        read_mask_folder(images, mask_dir, 3)
    cv2.imwrite(str(mask_dir / "img1.png"), np.zeros((47, 48), np.uint8))
    with pytest.raises(DataError, match=r"img1.png: mask is 47x48 but its image .*img1.jpg is 48x48"):
        read_mask_folder(images, mask_dir, 3)
    (mask_dir / "img1.png").unlink()
    with pytest.raises(DataError, match=r"img1.jpg has no label map"):
        read_mask_folder(images, mask_dir, 3)
    cv2.imwrite(str(mask_dir / "img1.png"), np.zeros((48, 48), np.uint8))
    cv2.imwrite(str(mask_dir / "stray.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(DataError, match=r"1 file\(s\) have no image .*stray.png"):
        read_mask_folder(images, mask_dir, 3)
    (mask_dir / "stray.png").unlink()
    colour = np.zeros((48, 48, 3), np.uint8)
    colour[0, 0] = (0, 0, 1)
    cv2.imwrite(str(mask_dir / "img1.png"), colour)
    with pytest.raises(DataError, match=r"img1.png: a colour image"):
        read_mask_folder(images, mask_dir, 3)
    (mask_dir / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"img1.png: not a readable"):
        read_mask_folder(images, mask_dir, 3)


def test_steel_loader_reads_a_mask_folder_like_a_csv(tmp_path):
    masks = make_label_maps(np.random.default_rng(4))
    root = write_dataset(tmp_path, masks, "labels")
    data = SteelDataLoader(str(root), batch_size=1, validation_split=0, num_workers=0, classes=3,
                           transforms=LightTransforms(), seed=0, format="mask_folder", images="images",
                           masks="masks")
    data.train_dataset.transforms = LightTransforms().build(train=False)  # no random flip
    for i, mask in enumerate(masks):
        image, target = data.train_dataset[i]
        assert image.shape == (1, *mask.shape[:2])
        assert np.array_equal(target.numpy(), mask.transpose(2, 0, 1))
    with pytest.raises(ConfigError, match="data_loader.args.format: 'voc'"):
        SteelDataLoader(str(root), classes=3, transforms=LightTransforms(), seed=0, format="voc")

