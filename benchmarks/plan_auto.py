"""``sever auto`` against a shipped hand-written experiment at the same time budget, on held-out images.

A part of the dataset is held out from everything (the plan never sees it). On the rest:

- the hand-written experiment (default experiments/neu-seg.yml) trains as it is, with its
  data_dir pointed at the rest; it tunes its own post-processing on its validation split;
- ``sever auto`` plans and trains a study with ``--time`` equal to the hand-written run's wall
  time (or ``--time T`` for both: the hand-written run then gets ``trainer.time_budget: T``).

Both predict the held-out images with their tuned post-processing and are scored there:
competition metric (mean Dice over image-class pairs) and per-class Dice. Wall seconds of each
are printed beside. Kaggle-layout datasets (``sever convert`` turns a mask folder into one);
``--format mask_folder`` converts the training part back to a mask folder for both.

    python benchmarks/plan_auto.py --data ../shared/data/neu-seg --held-out 400
    python benchmarks/plan_auto.py --data ../shared/data/neu-seg --held-out 400 --train-seed 7   # another seed
    python benchmarks/plan_auto.py --data ../shared/data/neu-seg --pool 120 --held-out 40 --time 4m   # smoke
    python benchmarks/plan_auto.py --data data/demo --experiment experiments/demo.yml --held-out 64 --time 6m
    python benchmarks/plan_auto.py ... --format mask_folder   # both train from a mask folder
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner
from neu_seg_study import split  # disjoint parts by symlink (benchmarks/ is on sys.path when run)

from sever import experiment
from sever.cli.app import cli
from sever.inference.evaluate import evaluate_csv
from sever.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]


def sever(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exit_code != 0:
        raise SystemExit(f"sever {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output


def as_mask_folder(train_dir: Path, classes: int) -> None:
    """Rewrite ``train_dir``'s masks as a mask folder (``train_masks/``) and drop its CSV."""
    sever("convert", "--from", "kaggle", "--to", "mask-folder", "--images", train_dir / "train_images",
          "--masks", train_dir / "train_masks", "--csv", train_dir / "train.csv", "--classes", classes)
    (train_dir / "train.csv").unlink()


def hand_written(experiment: Path, train_dir: Path, save_dir: Path, device: str, budget: str | None, fmt: str,
                 seed: int | None = None):
    """Train the experiment file on ``train_dir`` (with ``seed`` instead of its own); returns its run folder
    and wall seconds."""
    config = load_config(experiment)
    if seed is not None:
        config["seed"] = seed
    config["save_dir"], config["device"] = str(save_dir), device
    config["data_loader"]["args"]["data_dir"] = str(train_dir)
    config["data_loader"]["args"]["format"] = fmt
    config["data_loader"]["args"]["generate_demo"] = False  # experiments/demo.yml would write its own data there
    if budget is not None:
        config["trainer"]["time_budget"] = budget
    started = time.perf_counter()
    run = experiment.train(config)
    return run.root, time.perf_counter() - started


def held_out_score(model: Path | list[Path], held_out: Path, out: Path, tag: str, classes: int, device: str,
                   postprocess: Path | None = None):
    """Predict the held-out images with ``model`` (several: their ensemble) and score them; the post-processing
    is ``postprocess``, else the model's own tuned settings."""
    prediction = out / f"{tag}.csv"
    models = [arg for path in (model if isinstance(model, list) else [model]) for arg in ("-m", path)]
    settings = [] if postprocess is None else ["--postprocess", postprocess]
    sever("predict", *models, *settings, "-i", held_out / "train_images", "-o", prediction, "--device", device)
    return evaluate_csv(prediction, held_out / "train.csv", classes, held_out / "train_images")


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu-seg")
    parser.add_argument("--experiment", type=Path, default=REPO / "experiments" / "neu-seg.yml")
    parser.add_argument("--held-out", type=int, default=400, help="images held out from everything")
    parser.add_argument("--pool", type=int, default=10**9, help="training images (default: all the rest)")
    parser.add_argument("--time", default=None, help="budget of both; default: the hand-written run's wall time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of both trainings (default: the experiment file's, and sever plan's 42)")
    parser.add_argument("--format", choices=["kaggle", "mask_folder"], default="kaggle",
                        help="what both read their training masks from (mask_folder: converted from the CSV)")
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="plan-auto-"))
    available = sum(1 for _ in (args.data / "train_images").iterdir())
    if args.held_out >= available:
        raise SystemExit(f"--held-out {args.held_out}: {args.data} has only {available} images")
    parts = split(args.data, out, {"held_out": args.held_out, "train": min(args.pool, available - args.held_out)},
                  seed=args.seed)
    train_dir, held_out = parts["train"], parts["held_out"]
    classes = load_config(args.experiment)["classes"]
    if args.format == "mask_folder":
        as_mask_folder(train_dir, classes)

    run, hand_seconds = hand_written(args.experiment, train_dir, out / "saved", args.device, args.time, args.format,
                                     args.train_seed)
    budget = args.time or f"{int(hand_seconds)}s"
    started = time.perf_counter()
    seed = [] if args.train_seed is None else ["--seed", args.train_seed]
    output = sever("auto", train_dir, "--format", args.format, "--time", budget, "--device", args.device,
                   "-o", out / "auto", "--name", "auto", *seed)
    auto_seconds = time.perf_counter() - started
    study = Path(re.search(r"^(?:study|run) saved in (.+)$", output, re.M).group(1))

    scores = {"hand-written": held_out_score(run, held_out, out, "hand", classes, args.device),
              "sever auto": held_out_score(study, held_out, out, "auto", classes, args.device)}
    seconds = {"hand-written": hand_seconds, "sever auto": auto_seconds}
    print(f"held-out images: {args.held_out}; training images: {len(list((train_dir / 'train_images').iterdir()))}; "
          f"budget {budget}; device {args.device}")
    print(f"{'':<14}{'wall s':>8}{'metric':>8}" + "".join(f"{'dice_' + str(k):>9}" for k in range(classes)))
    for name, result in scores.items():
        print(f"{name:<14}{seconds[name]:>8.0f}{result.mean_dice:>8.4f}"
              + "".join(f"{value:>9.4f}" for value in result.class_dice))
    print(f"auto / hand-written metric: {scores['sever auto'].mean_dice / max(scores['hand-written'].mean_dice, 1e-9):.3f}"
          f"; plan: {out / 'auto' / 'auto.yml'}; everything in {out}")


if __name__ == "__main__":
    main_()
