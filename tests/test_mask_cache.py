"""The decoded-mask cache (``data_loader.args.mask_cache``): same batches, reused entries, no stale masks."""

import logging
import re
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sever.data_loader.mask_cache as mask_cache_module
from sever.data_loader.augmentation import HeavyCropTransforms
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.mask_cache import MaskCache
from sever.data_loader.rle import decode_runs, mask_runs, rle_encode
from sever.exceptions import ConfigError


def loader(data_dir, **kwargs):
    options = dict(batch_size=4, validation_split=0.25, num_workers=0, classes=4,
                   transforms=HeavyCropTransforms(64, 64), seed=1, check="off")
    options.update(kwargs)
    return SteelDataLoader(str(data_dir), **options)


def batches(data, epochs=(1, 2)):
    """Every training batch of ``epochs``, then every validation batch (whole images)."""
    out = []
    for epoch in epochs:
        data.train_loader.batch_sampler.set_epoch(epoch)
        out += list(data.train_loader)
    return out + list(data.valid_loader)


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (x0, y0), (x1, y1) in zip(first, second):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


@given(st.integers(1, 6), st.integers(1, 3), st.data())
def test_a_cached_window_is_the_window_decode(height, classes, data):
    width = data.draw(st.integers(1, 8))
    mask = data.draw(arrays(np.uint8, (height, width, classes), elements=st.integers(0, 1)))
    runs = [mask_runs(mask[..., k]) for k in range(classes)]
    encodings = [rle_encode(mask[..., k]) for k in range(classes)]
    first = data.draw(st.integers(0, width - 1))
    stop = data.draw(st.integers(first + 1, width))
    cache = MaskCache()
    for columns in (None, (first, stop), (first, stop)):  # a miss, then hits
        window = cache.masks(encodings, runs, (height, width), columns)
        expected = decode_runs(runs, (height, width), columns)
        assert window.flags.c_contiguous and window.dtype == np.uint8 and window.shape == expected.shape
        assert np.array_equal(window, expected) and np.array_equal(window, mask[:, slice(*(columns or (0, width)))])
    marked = int(mask.any(axis=(0, 1)).sum())
    assert [entry.shape for entry in cache.entries.values()] == ([(marked, width, height)] if marked else [])


@pytest.mark.parametrize("mode, workers", [("memory", 0), ("disk", 2)])
def test_batches_are_the_same_with_and_without_the_cache(demo_dir, tmp_path, mode, workers):
    plain = batches(loader(demo_dir))
    cache_dir = str(tmp_path / "cache") if mode == "disk" else None
    cached = loader(demo_dir, mask_cache=mode, cache_dir=cache_dir, num_workers=workers)
    assert_same_batches(plain, batches(cached))  # epoch 1 fills the cache, epoch 2 and validation read it
    if mode == "memory":
        assert cached.train_dataset.mask_cache.entries  # filled in this process (no workers)
    else:
        assert list((tmp_path / "cache").glob("*.npy")) and not list((tmp_path / "cache").glob("*.tmp"))


def test_disk_entries_are_reused_by_a_later_loader(demo_dir, tmp_path, monkeypatch):
    data_dir = tmp_path / "demo"
    shutil.copytree(demo_dir, data_dir)
    plain = batches(loader(data_dir))
    filling = loader(data_dir, mask_cache="disk")
    for dataset in (filling.train_dataset, filling.valid_dataset):
        for index in range(len(dataset)):
            dataset.load(index)
    entries = sorted((data_dir / ".sever-cache" / "masks").glob("*.npy"))
    every = loader(data_dir, validation_split=0).train_dataset.annotations
    distinct = {tuple(row) for row in every.encodings if any(row)}  # the demo images are all 64x256
    assert len(entries) == len(distinct)  # one per distinct mask; defect-free images need none

    def no_decoding(*args):
        raise AssertionError("a cached mask was decoded again")

    monkeypatch.setattr(mask_cache_module, "column_planes", no_decoding)
    assert_same_batches(plain, batches(loader(data_dir, mask_cache="disk")))
    assert sorted((data_dir / ".sever-cache" / "masks").glob("*.npy")) == entries


def test_an_edited_csv_row_is_not_served_from_the_cache(demo_dir, tmp_path):
    data_dir = tmp_path / "demo"
    shutil.copytree(demo_dir, data_dir)
    options = dict(validation_split=0, mask_cache="disk", cache_dir=str(tmp_path / "cache"))
    before = loader(data_dir, **options).train_dataset
    lines = (data_dir / "train.csv").read_text().splitlines()
    image_id, class_id, _ = lines[1].split(",")
    position = [path.name for path in before.paths].index(image_id)
    _, old_mask = before.load(position)
    lines[1] = f"{image_id},{class_id},1 10"
    (data_dir / "train.csv").write_text("\n".join(lines) + "\n")
    _, new_mask = loader(data_dir, **options).train_dataset.load(position)
    _, expected = loader(data_dir, validation_split=0).train_dataset.load(position)
    assert np.array_equal(new_mask, expected) and not np.array_equal(new_mask, old_mask)
    assert new_mask[:10, 0, int(class_id) - 1].all() and new_mask[..., int(class_id) - 1].sum() == 10


def test_an_unreadable_entry_is_rewritten(tmp_path, caplog):
    mask = np.zeros((6, 5, 2), np.uint8)
    mask[1:4, 2, 1] = 1
    runs = [mask_runs(mask[..., k]) for k in range(2)]
    encodings = ["", "14 3"]
    cache = MaskCache(tmp_path)
    assert np.array_equal(cache.masks(encodings, runs, (6, 5)), mask)
    (entry,) = tmp_path.glob("*.npy")
    whole = entry.read_bytes()
    for damaged in (b"not a numpy file", whole[:-7]):
        entry.write_bytes(damaged)
        with caplog.at_level(logging.WARNING, logger="sever.data_loader.mask_cache"):
            assert np.array_equal(cache.masks(encodings, runs, (6, 5), (1, 4)), mask[:, 1:4])
        assert "rewriting" in caplog.text and entry.read_bytes() == whole
        caplog.clear()
    assert np.load(entry).shape == (1, 5, 6)  # only class 2 has defect pixels


def test_bad_settings_fail_at_start_up(demo_dir, tmp_path):
    with pytest.raises(ConfigError, match="data_loader.args.mask_cache: 'sometimes' is not one of off, memory, disk"):
        loader(demo_dir, mask_cache="sometimes")
    with pytest.raises(ConfigError, match="data_loader.args.cache_dir is only used with mask_cache: disk"):
        loader(demo_dir, mask_cache="memory", cache_dir=str(tmp_path))
    assert loader(demo_dir, mask_cache=False).train_dataset.mask_cache is None  # YAML reads a bare off as False
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = f"data_loader.args.cache_dir: cannot write the mask cache in {re.escape(str(blocker))}"
    with pytest.raises(ConfigError, match=unwritable):
        loader(demo_dir, mask_cache="disk", cache_dir=str(blocker))
