"""Property-based fuzzing: random bytes and strings into the RLE decoder, the CSV loader, the
config loader, image headers and checkpoint files give a valid result or the documented error,
never anything else."""

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from conftest import tiny_config
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sever.data_loader.annotations import read_rle_csv
from sever.data_loader.checks import image_header_size
from sever.data_loader.rle import rle_decode, rle_parse
from sever.exceptions import CheckpointError, ConfigError, DataError, RLEError
from sever.experiment import prepare_config
from sever.utils.checkpoint import CHECKPOINT_KEYS, load_checkpoint
from sever.utils.config import apply_overrides, load_config, parse_yaml, validate_config

FUZZ = settings(max_examples=150, deadline=None)

RLE_LIKE = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789 +-\t\n.e", max_size=40),
    st.lists(st.integers(-3, 500), max_size=12).map(lambda values: " ".join(map(str, values))),
)
ANY_RLE = st.one_of(RLE_LIKE, st.binary(max_size=20), st.integers(), st.floats(), st.none(), st.lists(st.integers()))

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=12))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(ANY_RLE)
def test_rle_parse_gives_sorted_disjoint_runs_or_an_rle_error(rle):
    try:
        starts0, lengths = rle_parse(rle)
    except RLEError:
        return
    assert starts0.dtype == lengths.dtype == np.int64 and starts0.shape == lengths.shape
    if starts0.size:
        assert starts0.min() >= 0 and lengths.min() >= 1
        assert (starts0[1:] >= starts0[:-1] + lengths[:-1]).all()


@FUZZ
@given(ANY_RLE, st.integers(1, 24), st.integers(1, 24))
def test_rle_decode_gives_a_binary_mask_or_an_rle_error(rle, height, width):
    try:
        mask = rle_decode(rle, (height, width))
    except RLEError:
        return
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert int(mask.sum()) == int(rle_parse(rle)[1].sum())


CSV_CELLS = st.text(alphabet=st.sampled_from(list("ab._/\\1234 \",\n\r\x00é")), max_size=12)
CSV_HEADERS = st.sampled_from([
    "ImageId,ClassId,EncodedPixels", "ImageId,EncodedPixels,ClassId", "ImageId_ClassId,EncodedPixels",
    "ImageId,ClassId", "", "ImageId,ImageId,EncodedPixels",
])


def read_csv_bytes(blob: bytes, n_classes: int):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.csv"
        path.write_bytes(blob)
        return read_rle_csv(path, n_classes, image_ids=["a.jpg", "b.jpg"])


def check_csv(blob: bytes, n_classes: int) -> None:
    try:
        annotations = read_csv_bytes(blob, n_classes)
    except DataError:  # RLEError is a DataError
        return
    assert annotations.n_classes == n_classes and annotations.image_ids[:2] == ("a.jpg", "b.jpg")
    for rle in annotations.encodings.flat:
        rle_parse(rle)


@FUZZ
@given(st.binary(max_size=200), st.integers(1, 4))
def test_csv_of_random_bytes_reads_or_raises_a_data_error(blob, n_classes):
    check_csv(blob, n_classes)


@FUZZ
@given(CSV_HEADERS, st.lists(st.lists(st.one_of(CSV_CELLS, RLE_LIKE), min_size=1, max_size=4), max_size=6),
       st.integers(1, 4))
def test_csv_of_random_rows_reads_or_raises_a_data_error(header, rows, n_classes):
    text = "\n".join([header] + [",".join(row) for row in rows])
    check_csv(text.encode("utf-8"), n_classes)


@FUZZ
@given(st.binary(max_size=300))
def test_yaml_of_random_bytes_loads_or_raises_a_config_error(blob):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yml"
        path.write_bytes(blob)
        try:
            config = load_config(path)
        except ConfigError:
            return
    assert isinstance(config, dict)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab:- []{}!&*|>'\"#%@`,?\n\t0123.e")), max_size=60))
def test_yaml_of_random_text_parses_or_raises_a_config_error(text):
    try:
        parsed = parse_yaml(text, "fuzz.yml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yml")  # the message names the source
        return
    assert parse_yaml(yaml.safe_dump(parsed)) == parsed  # plain data: it dumps and reads back unchanged


@settings(max_examples=8, deadline=None)  # each deep example takes PyYAML a while
@given(st.integers(100, 1500), st.sampled_from(["[", "{a: ", "- ", "a:\n "]))
def test_deeply_nested_yaml_is_a_config_error(depth, opening):
    try:
        parse_yaml(opening * depth, "deep.yml")
    except ConfigError as exc:
        assert str(exc).startswith("deep.yml")


BASE = tiny_config(Path("data"), Path("saved"))


def leaf_paths(node, prefix=()):
    """Every key path of a nested dict/list config."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from leaf_paths(value, prefix + (key,))


PATHS = list(leaf_paths(BASE))


@FUZZ
@given(st.sampled_from(PATHS), st.one_of(VALUES, st.just("<delete>")), st.text(max_size=10))
def test_mutated_configs_validate_or_raise_a_config_error(path, value, new_key):
    config = copy.deepcopy(BASE)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if value == "<delete>":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    if isinstance(parent, dict) and new_key:
        parent[new_key] = value
    try:
        prepared = prepare_config(config)
    except ConfigError:
        return
    assert validate_config(prepared) == prepared


@FUZZ
@given(VALUES)
def test_random_structures_validate_or_raise_a_config_error(config):
    try:
        valid = validate_config(config if isinstance(config, dict) else {"name": config})
    except ConfigError:
        return
    assert validate_config(valid) == valid  # a validated config is a fixed point: defaults filled once


@FUZZ
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab.=01-[]{}: ,")), max_size=20), max_size=4))
def test_random_overrides_apply_or_raise_a_config_error(overrides):
    before = copy.deepcopy(BASE)
    try:
        result = apply_overrides(BASE, overrides)
    except ConfigError:
        assert BASE == before
        return
    assert BASE == before, "overrides apply to a copy"
    if overrides:  # the last override of a plain dotted key holds its parsed value
        key, _, raw = overrides[-1].partition("=")
        node = result
        for part in key.strip().split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert node == parse_yaml(raw)


@FUZZ
@given(st.sampled_from([b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM", b""]), st.binary(max_size=120),
       st.sampled_from([".jpg", ".png", ".bmp"]))
def test_image_header_of_random_bytes_gives_a_size_or_a_data_error(start, blob, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(start + blob)
        try:
            height, width = image_header_size(path)
        except DataError:
            return
    assert height >= 1 and width >= 1


def checkpoint_bytes():
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "good.pth"
        torch.save({"state_dict": {"w": torch.arange(6.0)}, "config": {"name": "t"}, "epoch": 1, "step": 0}, path)
        return path.read_bytes()


GOOD_CHECKPOINT = checkpoint_bytes()


BYTE_VALUES = st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)
HEADER_AND_PICKLE = st.integers(0, min(400, len(GOOD_CHECKPOINT) - 1))  # zip header, then data.pkl


@FUZZ
@given(st.integers(0, len(GOOD_CHECKPOINT)), st.lists(st.tuples(HEADER_AND_PICKLE, BYTE_VALUES), max_size=4))
# One byte changed in the zip header or the pickle made torch.load raise IndexError or TypeError.
@example(len(GOOD_CHECKPOINT), [(26, 0xFF)])
@example(len(GOOD_CHECKPOINT), [(71, 0)])
@example(len(GOOD_CHECKPOINT), [(195, 0x80)])
def test_damaged_checkpoints_load_or_raise_a_checkpoint_error(length, flips):
    blob = bytearray(GOOD_CHECKPOINT)
    for position, value in flips:
        blob[position] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.pth"
        path.write_bytes(bytes(blob[:length]))
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            return
    assert all(key in state for key in CHECKPOINT_KEYS)
