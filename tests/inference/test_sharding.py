"""``sever predict --nproc N``: the images shared by N real processes (gloo on CPU), merged into one submission."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st
from inference_runs import classifier_changes, make_run

from sever.data_loader.datasets import list_images
from sever.data_loader.demo import make_demo_data
from sever.inference.sharding import shard_names


@given(images=st.integers(0, 40), batch_size=st.integers(1, 6), world_size=st.integers(1, 5))
def test_the_shards_are_the_single_process_batches_dealt_in_turn(images, batch_size, world_size):
    names = [f"{i:03d}.jpg" for i in range(images)]
    batches = [names[start:start + batch_size] for start in range(0, images, batch_size)]
    for rank in range(world_size):
        expected = [name for batch in batches[rank::world_size] for name in batch]
        assert shard_names(names, batch_size, rank, world_size) == expected


@pytest.fixture(scope="module")
def mixed_runs(module_tmp):
    """11 test images of mixed sizes, a segmentation run and a classifier (random weights)."""
    root = module_tmp("sharding")
    data = make_demo_data(root / "data", n_train=8, n_test=11, height=64, width=128, seed=11, mixed_sizes=True)
    return data, make_run(root / "runs", data, "fpn", seed=1), make_run(root / "runs", data, "cls", seed=4,
                                                                          **classifier_changes())


def sever_predict(out: Path, run: Path, classifier: Path, images: Path, nproc: int, *extra):
    """``sever predict`` in a fresh process, one thread per process as torchrun gives each rank."""
    command = [sys.executable, "-m", "sever", "predict", "-m", run, "--classifier", classifier, "-i", images,
               "-o", out / "submission.csv", "--tta", "hflip", "--save-probs", out / "probs", "--visualize",
               out / "overlays", "--batch-size", 2, "--num-workers", 0, "--nproc", nproc, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=900)


def test_nproc_2_writes_what_one_process_writes(mixed_runs, tmp_path):
    data, run, classifier = mixed_runs
    images = data / "test_images"
    names = list_images(images)
    for nproc in (1, 2):
        done = sever_predict(tmp_path / f"n{nproc}", run, classifier, images, nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("post-processing:") == 1, done.stdout  # rank 0 alone speaks
        # ": N images in" and not "N images": the throughput ("19.11 images/s") may end in N too
        assert done.stdout.count(f": {len(names)} images in ") == 1, done.stdout
    one, two = tmp_path / "n1", tmp_path / "n2"
    assert (two / "submission.csv").read_bytes() == (one / "submission.csv").read_bytes()
    sizes = set()
    assert sorted(p.name for p in (two / "probs").iterdir()) == sorted(f"{name}.npz" for name in names)
    for name in names:
        with np.load(one / "probs" / f"{name}.npz") as a, np.load(two / "probs" / f"{name}.npz") as b:
            assert np.array_equal(a["probs"], b["probs"]) and np.array_equal(a["class_probs"], b["class_probs"])
            sizes.add(a["probs"].shape)
    assert len(sizes) > 3, "the images are of mixed sizes"
    assert sorted(p.name for p in (two / "overlays").iterdir()) == sorted(f"{Path(n).stem}.jpg" for n in names)


def test_a_failing_process_fails_the_command_and_keeps_the_old_submission(mixed_runs, tmp_path):
    data, run, classifier = mixed_runs
    images = tmp_path / "images"
    images.mkdir()
    for name in list_images(data / "test_images"):
        (images / name).write_bytes((data / "test_images" / name).read_bytes())
    broken = list_images(images)[3]  # the second batch of 2: rank 1's
    (images / broken).write_bytes(b"not an image")
    old = tmp_path / "out" / "submission.csv"
    old.parent.mkdir()
    old.write_text("ImageId,EncodedPixels,ClassId\nold.jpg,,1\n")
    done = sever_predict(tmp_path / "out", run, classifier, images, 2)
    assert done.returncode != 0
    assert "1 of 2 processes failed" in done.stderr and "rank 1: DataError" in done.stderr, done.stderr[-3000:]
    assert broken in done.stderr
    assert old.read_text() == "ImageId,EncodedPixels,ClassId\nold.jpg,,1\n"
