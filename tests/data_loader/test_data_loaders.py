"""Datasets, the stratified split and the loaders built from a config."""

import shutil

import cv2
import numpy as np
import pytest
import torch

from sever.data_loader.augmentation import PAD_LABEL, HeavyCropTransforms, LightTransforms
from sever.data_loader.data_loaders import SteelDataLoader, stratified_split
from sever.data_loader.datasets import SegmentationDataset, read_grey
from sever.data_loader.rle import rle_decode
from sever.exceptions import ConfigError, DataError, RLEError
from sever.model.model import build_model
from sever.registries import TRANSFORMS


def loader(data_dir, **kwargs):
    options = dict(batch_size=4, validation_split=0.25, num_workers=0, classes=4,
                   transforms=HeavyCropTransforms(64, 64), seed=1)
    options.update(kwargs)
    return SteelDataLoader(str(data_dir), **options)


def test_stratified_split_keeps_each_stratum_proportion():
    n_defects = np.array([0] * 40 + [1] * 40 + [2] * 16 + [3] * 3 + [4] * 1)
    train, valid = stratified_split(n_defects, 0.25, seed=0)
    assert len(np.intersect1d(train, valid)) == 0 and len(train) + len(valid) == 100
    counts = {k: int(np.sum(np.minimum(n_defects[valid], 3) == k)) for k in range(4)}
    assert counts == {0: 10, 1: 10, 2: 4, 3: 1}
    again, _ = stratified_split(n_defects, 0.25, seed=0)
    other, _ = stratified_split(n_defects, 0.25, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert len(stratified_split(n_defects, 10, seed=0)[1]) == 10
    with pytest.raises(ConfigError, match="validation_split"):
        stratified_split(n_defects, 1.0, seed=0)


def test_training_batches_have_documented_shapes_and_types(demo_dir):
    data = loader(demo_dir)
    images, masks = next(iter(data.train_loader))
    assert images.shape == (4, 1, 64, 64) and images.dtype == torch.uint8
    assert masks.shape == (4, 4, 64, 64) and masks.dtype == torch.uint8
    assert set(masks.unique().tolist()) <= {0, 1}
    assert len(data.train_dataset) == 18 and len(data.valid_dataset) == 6
    images, masks = next(iter(data.valid_loader))
    assert images.shape[-2:] == (64, 256), "validation sees whole images"


def test_masks_follow_the_csv_pixel_for_pixel(demo_dir):
    data = loader(demo_dir, validation_split=0, transforms=LightTransforms())
    dataset = data.valid_dataset or data.train_dataset
    rows = {}  # (image, class index) -> RLE, straight from the CSV text
    for line in (demo_dir / "train.csv").read_text().splitlines()[1:]:
        image_id, class_id, rle = line.split(",")
        rows[image_id, int(class_id) - 1] = rle
    assert len(dataset) == 24 and rows
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        name = dataset.paths[index].name
        expected = np.stack([rle_decode(rows.get((name, k), ""), image.shape) for k in range(4)], axis=-1)
        assert mask.shape == (*image.shape, 4) and mask.dtype == np.uint8
        assert np.array_equal(mask, expected), name


def test_augmentation_is_reproducible_from_seed_and_epoch(demo_dir):
    first, second = loader(demo_dir), loader(demo_dir)
    for data in (first, second):
        data.train_loader.batch_sampler.set_epoch(3)
    a, b = next(iter(first.train_loader)), next(iter(second.train_loader))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    first.train_loader.batch_sampler.set_epoch(4)
    c = next(iter(first.train_loader))
    assert not torch.equal(a[0], c[0])


def test_augmentation_does_not_depend_on_worker_count(demo_dir):
    serial, parallel = loader(demo_dir), loader(demo_dir, num_workers=2)
    for data in (serial, parallel):
        data.train_loader.batch_sampler.set_epoch(2)
    for (x0, y0), (x1, y1) in zip(serial.train_loader, parallel.train_loader):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_pseudo_labels_join_training_with_a_fixed_share_per_batch(demo_dir):
    data = loader(demo_dir, batch_size=8, pseudo_csv="pseudo.csv",
                  sampler={"type": "WeightedFixedBatchSampler", "args": {"weights": [0.75, 0.25]}})
    n_train = 18
    assert len(data.train_dataset) == n_train + 6
    sampler = data.train_loader.batch_sampler
    sampler.set_epoch(1)
    for batch in sampler:
        indices = [index for index, _ in batch]
        assert len(indices) == 8 and sum(i >= n_train for i in indices) == 2
    assert len(data.valid_dataset) == 6, "pseudo-labels never reach validation"


def test_classification_targets_are_presence_of_each_class_in_the_crop(demo_dir):
    seg = loader(demo_dir, transforms=LightTransforms(), validation_split=0)
    cls = loader(demo_dir, transforms=LightTransforms(), validation_split=0, task="classification")
    for index in range(6):
        _, mask = seg.train_dataset[(index, 5)]
        _, presence = cls.train_dataset[(index, 5)]
        assert presence.dtype == torch.float32 and presence.shape == (4,)
        assert torch.equal(presence, mask.flatten(1).amax(1).float())


def test_bad_data_is_reported_with_the_file(demo_dir, tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        loader(tmp_path / "nowhere")
    (tmp_path / "empty" / "train_images").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        loader(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir, broken)
    victim = sorted((broken / "train_images").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"have no image .*{victim.name}"):
        loader(broken)
    with pytest.raises(DataError, match="fewer than data_loader.args.batch_size"):
        loader(demo_dir, batch_size=64)
    for height in (0, -32):
        with pytest.raises(ConfigError, match=rf"augmentation: .*crop height must be a positive multiple of 32 .*"
                                              rf"got {height}"):
            loader(demo_dir, transforms=TRANSFORMS.build({"type": "HeavyCropTransforms",
                                                          "args": {"height": height, "width": 64}}, "augmentation"))


def test_unreadable_and_truncated_images(tmp_path):
    path = tmp_path / "a.jpg"
    ok, encoded = cv2.imencode(".jpg", np.full((32, 32), 90, np.uint8))
    path.write_bytes(encoded.tobytes()[:-50])
    with pytest.raises(DataError, match="truncated"):
        read_grey(path)
    path.write_bytes(b"not an image")
    with pytest.raises(DataError):
        read_grey(path)
    png = tmp_path / "b.png"
    png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="not a readable image"):
        read_grey(png)


def test_rle_running_past_the_image_names_row_and_image(demo_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir, broken)
    lines = (broken / "train.csv").read_text().splitlines()
    image_id, class_id, _ = lines[1].split(",")
    lines[1] = f"{image_id},{class_id},1 999999"
    (broken / "train.csv").write_text("\n".join(lines) + "\n")
    data = loader(broken, validation_split=0, transforms=LightTransforms(), check="off")  # test the load-time message
    position = [p.name for p in data.train_dataset.paths].index(image_id)
    with pytest.raises(RLEError, match=rf"row 1.*{image_id}"):
        data.train_dataset.load(position)
    cropping = SegmentationDataset(data.train_dataset.paths, data.train_dataset.annotations,
                                   HeavyCropTransforms(32, 32).build(train=True))
    with pytest.raises(RLEError, match=rf"row 1 .*{image_id}.*image .*{image_id}, 64x256"):
        cropping[(position, 0)]  # the crop-first path reads the runs before decoding


def test_neu_seg_real_data_pads_for_the_network_and_crops_back(shared_data):
    transforms = HeavyCropTransforms(160, 160)
    data = SteelDataLoader(str(shared_data / "neu-seg"), batch_size=4, validation_split=0.02, num_workers=0,
                           classes=3, transforms=transforms, seed=0)
    assert len(data.train_dataset) + len(data.valid_dataset) == 3630
    masks = sum(d.annotations.has_defect().sum() for d in (data.train_dataset, data.valid_dataset))
    assert masks == 4337
    images, masks = next(iter(data.valid_loader))  # batches pad to a multiple of 32, masks with PAD_LABEL
    assert images.shape[-2:] == (224, 224) and masks.shape[1] == 3
    assert (masks[:, :, 200:] == PAD_LABEL).all() and (masks[:, :, :200, :200] <= 1).all()
    model = build_model({"type": "Unet", "args": {"encoder_name": "resnet18"}}, 3).eval()
    with torch.inference_mode():
        assert model(transforms.normalization(images[:1, :, :200, :200])).shape == (1, 3, 200, 200)


@pytest.mark.parametrize("option, value", [("mask_cache", "memory"), ("mask_cache", False), ("cache_dir", "cache")])
def test_the_removed_mask_cache_options_say_they_were_removed(demo_dir, option, value):
    with pytest.raises(ConfigError, match=rf"data_loader.args.{option}: the decoded-mask cache was removed .*"
                                          rf"delete {option} from the config"):
        loader(demo_dir, **{option: value})
