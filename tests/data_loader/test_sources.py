"""Data sources chosen by name, and the train/validation split read without building loaders."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import tiny_config
from sever.data_loader.annotations import Annotations
from sever.data_loader.augmentation import LightTransforms
from sever.data_loader.data_loaders import SteelDataLoader, config_split
from sever.data_loader.datasets import list_images
from sever.data_loader.rle import rle_encode
from sever.data_loader.sources import DATA_SOURCES, DataFolder, register_source
from sever.exceptions import ConfigError, DataError
from sever.inference.evaluate import predictor_split, validation_split
from sever.utils.config import output_classes


def band_mask(height, width):
    """A (H, W) uint8 mask with a defect band over the middle rows."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 2] = 1
    return mask


@register_source("band_test", labels="masks")
def read_bands(folder: DataFolder):
    """A test format: every image in ``images`` has class 2 over its middle rows."""
    image_dir = folder.root / folder.images
    names = list_images(image_dir)
    encodings = np.full((len(names), folder.classes), "", dtype=object)
    for i, name in enumerate(names):
        height, width = cv2.imread(str(image_dir / name), cv2.IMREAD_GRAYSCALE).shape
        encodings[i, 1] = rle_encode(band_mask(height, width))
    annotations = Annotations(tuple(names), encodings, np.zeros(encodings.shape, np.int64), str(image_dir))
    return annotations, [image_dir / name for name in names]


def test_a_registered_source_is_used_through_the_format_name(demo_dir):
    data = SteelDataLoader(str(demo_dir), batch_size=2, validation_split=0, num_workers=0, format="band_test",
                           classes=3, transforms=LightTransforms(), seed=0)
    data.train_dataset.transforms = LightTransforms().build(train=False)  # no random flip
    assert len(data.train_dataset) == len(list_images(demo_dir / "train_images"))
    image, mask = data.train_dataset[0]
    expected = band_mask(*image.shape[-2:])
    assert mask.shape == (3, *image.shape[-2:])
    assert np.array_equal(mask[1].numpy(), expected)
    assert not mask[0].any() and not mask[2].any()


def test_unknown_and_box_formats_name_the_key_and_the_mask_formats(demo_dir):
    with pytest.raises(ConfigError, match=r"data_loader.args.format: unknown data source 'kagle'\. "
                                          r"Did you mean 'kaggle'\? Mask formats: band_test, kaggle, mask_folder$"):
        SteelDataLoader(str(demo_dir), format="kagle", classes=4, transforms=LightTransforms(), seed=0)
    with pytest.raises(ConfigError, match=r"data_loader.args.format: 'voc' gives boxes, not masks\. "
                                          r"Mask formats: band_test, kaggle, mask_folder$"):
        SteelDataLoader(str(demo_dir), format="voc", classes=4, transforms=LightTransforms(), seed=0)
    assert {"kaggle", "mask_folder", "voc"} <= set(DATA_SOURCES.names())


def test_the_split_function_gives_the_loaders_split(demo_dir):
    args = {"data_dir": str(demo_dir), "validation_split": 0.25, "batch_size": 4, "num_workers": 0}
    split = config_split(args, classes=4, class_names=None, seed=5)
    data = SteelDataLoader(**args, classes=4, transforms=LightTransforms(), seed=5)
    (train, train_paths), (valid, valid_paths) = split.train(), split.valid()
    assert train_paths == data.train_dataset.paths and valid_paths == data.valid_dataset.paths
    assert train == data.train_dataset.annotations and valid == data.valid_dataset.annotations
    assert len(valid) == 6 and not set(train_paths) & set(valid_paths)


def run_config(demo_dir, tmp_path, **args):
    config = tiny_config(demo_dir, tmp_path)
    config["data_loader"]["args"].update(args)
    return config


def test_evaluate_and_tune_read_the_split_without_building_loaders(demo_dir, tmp_path):
    """18 training images cannot fill a batch of 64, and an unknown sampler cannot be built: a loader
    would fail; the validation split of such a run is still read."""
    config = run_config(demo_dir, tmp_path, batch_size=64, sampler={"type": "NoSuchSampler"})
    with pytest.raises(DataError, match="fewer than data_loader.args.batch_size"):
        SteelDataLoader(**config["data_loader"]["args"], classes=4, transforms=LightTransforms(), seed=7)
    paths, annotations = validation_split(config)
    expected = config_split(config["data_loader"]["args"], classes=4, class_names=None, seed=7).valid()
    assert paths == expected[1] and annotations == expected[0] and len(paths) == 6
    predictor = SimpleNamespace(models=[SimpleNamespace(config=config, source="run")], classifiers=[],
                                outputs=output_classes(config))
    tuned_paths, _ = predictor_split(predictor)  # what sever tune reads
    assert tuned_paths == paths


def test_validation_split_errors_name_the_run_and_the_key(demo_dir, tmp_path):
    with pytest.raises(ConfigError, match="run 'tiny' held out no validation images"):
        validation_split(run_config(demo_dir, tmp_path, validation_split=0))
    config = run_config(demo_dir, tmp_path)
    config["data_loader"]["type"] = "VOCDataLoader"
    with pytest.raises(ConfigError, match="data_loader.type: the validation split of a VOCDataLoader run"):
        validation_split(config)


def test_the_validation_split_of_a_named_per_class_mask_folder_run(tmp_path):
    """The run's class_names name the per-class mask folders: the split must read them."""
    from mask_folders import NAMES, make_label_maps, write_dataset

    masks = make_label_maps(np.random.default_rng(2))
    root = write_dataset(tmp_path / "data", masks, "per-class", names=NAMES)
    config = run_config(root, tmp_path, format="mask_folder", images="images", masks="masks",
                        validation_split=2, batch_size=1)
    config.update(classes=3, class_names=NAMES)
    paths, annotations = validation_split(config)
    assert len(paths) == 2
    for position, path in enumerate(paths):
        index = int(path.stem.removeprefix("img"))
        decoded = annotations.decode(position, masks[index].shape[:2])
        assert np.array_equal(decoded, masks[index])
