"""A K-fold study against a single run at equal training work, scored on held-out NEU-Seg images.

Both train experiments/neu-seg.yml on the same pool of labelled images, each model on 1 - 1/K of
it: the single run (``validation_split: 1/K``) for K x E epochs, each of the K folds for E epochs,
so both see the same number of training images. The run is tuned on its validation split, the
study on its out-of-fold maps; both then predict images held out from everything, scored with the
default and with the tuned post-processing. CPU seconds of each training are printed beside.

    python benchmarks/neu_seg_study.py --data ../shared/data/neu-seg --pool 150 --held-out 60
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from sever import main, study
from sever.cli import cli
from sever.model.postprocess import PostProcessing
from sever.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]


def subset(data: Path, out: Path, pool: int, held_out: int, seed: int) -> tuple[Path, Path]:
    """``out/train`` (pool images) and ``out/held_out`` (held_out images), each images + CSV, by symlink."""
    names = sorted(p.name for p in (data / "train_images").iterdir())
    order = np.random.default_rng(seed).permutation(len(names))
    parts = {"held_out": [names[i] for i in order[:held_out]],
             "train": [names[i] for i in order[held_out:held_out + pool]]}
    with open(data / "train.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    for part, chosen in parts.items():
        folder = out / part / "train_images"
        folder.mkdir(parents=True)
        for name in chosen:
            (folder / name).symlink_to((data / "train_images" / name).resolve())
        keep = set(chosen)
        with open(out / part / "train.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([rows[0], *(row for row in rows[1:] if row[0] in keep)])
    return out / "train", out / "held_out"


def config(data_dir: Path, save_dir: Path, epochs: int, validation: float) -> dict:
    base = load_config(REPO / "experiments" / "neu-seg.yml")
    base["save_dir"], base["device"] = str(save_dir), "cpu"
    base["data_loader"]["args"].update(data_dir=str(data_dir), num_workers=0, validation_split=validation)
    base["trainer"].update(epochs=epochs, tensorboard=False, save_period=epochs)
    base["lr_scheduler"]["args"].update(n_epochs=epochs, start_anneal=max(1, epochs // 2))
    return base


def sever(*args) -> None:
    cli.main([str(a) for a in args], standalone_mode=False)


def score(model: Path, held_out: Path, out: Path, tag: str, postprocess: Path) -> None:
    prediction = out / f"{tag.replace(' ', '_').replace(',', '')}.csv"
    sever("predict", "-m", model, "-i", held_out / "train_images", "-o", prediction, "--device", "cpu",
          "--num-workers", 0, "--postprocess", postprocess)
    print(f"== {tag}: held-out score")
    sever("evaluate", "--pred", prediction, "--truth", held_out / "train.csv", "--images",
          held_out / "train_images", "--classes", 3)


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu-seg")
    parser.add_argument("--pool", type=int, default=150)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fold-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="neu-study-"))
    train_dir, held_out = subset(args.data, out, args.pool, args.held_out, seed=0)

    started = time.process_time()
    run = main.train(config(train_dir, out / "saved", args.folds * args.fold_epochs, 1 / args.folds))
    run_cpu = time.process_time() - started
    started = time.process_time()
    paths = study.train_study(config(train_dir, out / "saved", args.fold_epochs, 0.1), args.folds)
    study_cpu = time.process_time() - started
    print(f"training CPU seconds: single run {run_cpu:.0f} ({args.folds * args.fold_epochs} epochs), "
          f"study {study_cpu:.0f} ({args.folds} folds x {args.fold_epochs} epochs, out-of-fold maps included)")

    sever("tune", "-m", run.root, "--split", "val", "-o", out / "run_pp.yml", "--device", "cpu", "--num-workers", 0)
    sever("tune", "-m", paths.root)
    default = out / "default.yml"  # named, so neither falls back to tuned settings of its own
    default.write_text(PostProcessing.default(3).to_yaml())
    score(run.root, held_out, out, "single run, default post-processing", default)
    score(run.root, held_out, out, "single run, tuned on its validation split", out / "run_pp.yml")
    score(paths.root, held_out, out, "study, default post-processing", default)
    score(paths.root, held_out, out, "study, tuned out-of-fold", paths.root / "postprocess.yml")
    print(f"everything in {out}")


if __name__ == "__main__":
    main_()
