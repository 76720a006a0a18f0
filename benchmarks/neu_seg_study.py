"""A single run, a K-fold study and the study with one pseudo-label round, at equal time, on NEU-Seg.

The NEU-Seg images are cut into three disjoint parts: a labelled pool, unlabelled images (their
labels are never read) and a test part that neither training nor pseudo-labelling sees.

- **single run**: experiments/neu-seg.yml on the pool (``validation_split: 1/K``) with
  ``trainer.time_budget: BUDGET``; scored with the default post-processing and with the
  settings it tuned on its validation split at the end of training.
- **K-fold study** and **study + 1 pseudo-label round**: one study of the same config with
  ``pseudo: {images: UNLABELLED, rounds: 1}`` and ``trainer.time_budget: 2 x BUDGET``, which
  the study shares between its 2K fold runs, so round 0 (the plain K-fold study) trains for
  about BUDGET, like the single run. Round 0 is scored with its fold ensemble and its
  out-of-fold tuned settings, round 1 likewise (its folds trained with round 0's confident
  predictions of the unlabelled images added to every batch).

Every row is the competition metric (mean Dice over image-and-class pairs) and the per-class
Dice on the test part, with the CPU seconds of the process while it trained (prediction of the
out-of-fold maps and pseudo-labelling included) and the wall seconds the study file charged to
each round. Run it on an idle machine: the time budgets are wall-clock.

    python benchmarks/neu_seg_study.py --data ../shared/data/neu-seg --pool 600 --unlabelled 600 \\
        --test 400 --budget 20m
    python benchmarks/neu_seg_study.py --pool 48 --unlabelled 24 --test 24 --budget 40s   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from sever import experiment
from sever.inference.evaluate import evaluate_csv
from sever.inference.outputs import predict_directory
from sever.inference.predictor import build_predictor, load_settings
from sever.study import train as study
from sever.study.folder import StudyPaths
from sever.utils.config import load_config, parse_duration

REPO = Path(__file__).resolve().parents[1]
CLASSES = 3


def split(data: Path, out: Path, sizes: dict[str, int], seed: int) -> dict[str, Path]:
    """``out/<part>/train_images`` (symlinks) and ``out/<part>/train.csv`` for the parts ``sizes`` names, disjoint."""
    names = sorted(p.name for p in (data / "train_images").iterdir())
    order = np.random.default_rng(seed).permutation(len(names))
    with open(data / "train.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    parts, start = {}, 0
    for part, size in sizes.items():
        chosen = [names[i] for i in order[start:start + size]]
        start += size
        folder = out / part / "train_images"
        folder.mkdir(parents=True)
        for name in chosen:
            (folder / name).symlink_to((data / "train_images" / name).resolve())
        keep = set(chosen)
        with open(out / part / "train.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([rows[0], *(row for row in rows[1:] if row[0] in keep)])
        parts[part] = out / part
    return parts


def config(data_dir: Path, save_dir: Path, budget: str, validation: float, epochs: int) -> dict:
    """experiments/neu-seg.yml on ``data_dir`` with a time budget (``epochs`` only bounds it)."""
    base = load_config(REPO / "experiments" / "neu-seg.yml")
    base["save_dir"], base["device"] = str(save_dir), "cpu"
    base["data_loader"]["args"].update(data_dir=str(data_dir), num_workers=0, validation_split=validation)
    base["trainer"].update(epochs=epochs, tensorboard=False, save_period=epochs, time_budget=budget,
                           report_images=0)
    return base


def score(models: list[Path], postprocess: Path | str, test: Path, output: Path):
    """The competition metric and per-class Dice of ``models`` (an ensemble) on the test part."""
    predictor = build_predictor(models, device="cpu")
    settings = load_settings(postprocess, CLASSES, False)
    predict_directory(predictor, settings, test / "train_images", output, num_workers=0)
    return evaluate_csv(output, test / "train.csv", CLASSES, test / "train_images")


def round_runs(paths: StudyPaths, number: int) -> tuple[list[Path], Path]:
    at = paths.at_round(number)
    return [entry.run for entry in at.entries()], at.postprocess


def round_seconds(paths: StudyPaths, number: int) -> float:
    """Wall seconds the study file charged to round ``number`` (its folds and its pseudo-labelling)."""
    spent = yaml.safe_load(paths.file.read_text())["budget"]["spent"]
    return sum(seconds for key, seconds in spent.items() if key.startswith(f"round{number}/"))


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu-seg")
    parser.add_argument("--pool", type=int, default=600, help="labelled images")
    parser.add_argument("--unlabelled", type=int, default=600, help="images pseudo-labelled (labels unused)")
    parser.add_argument("--test", type=int, default=400, help="images scored, seen by nothing else")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--budget", default="20m", help="the single run's time budget; the study gets twice it")
    parser.add_argument("--max-epochs", type=int, default=200, help="an upper bound the budgets stop before")
    parser.add_argument("--max-uncertain", type=float, default=0.02, help="the pseudo-labelling confidence rule")
    args = parser.parse_args(argv)
    seconds = parse_duration(args.budget, "--budget")
    out = Path(tempfile.mkdtemp(prefix="neu-study-"))
    parts = split(args.data, out, {"pool": args.pool, "unlabelled": args.unlabelled, "test": args.test}, seed=0)

    cpu, wall = time.process_time(), time.monotonic()
    run = experiment.train(config(parts["pool"], out / "saved", args.budget, 1 / args.folds, args.max_epochs))
    run_cpu, run_wall = time.process_time() - cpu, time.monotonic() - wall

    study_config = config(parts["pool"], out / "saved", f"{2 * seconds:g}s", 0.1, args.max_epochs)
    study_config["pseudo"] = {"images": str(parts["unlabelled"] / "train_images"), "rounds": 1,
                              "max_uncertain": args.max_uncertain}
    cpu = time.process_time()
    paths = study.train_study(study_config, args.folds)
    study_cpu = time.process_time() - cpu
    record = yaml.safe_load(paths.file.read_text())

    default = out / "default.yml"  # named, so no run falls back to settings it tuned
    default.write_text(load_settings(None, CLASSES, False).to_yaml())
    rows = [
        ("single run, default post-processing", [run.root], default, f"{run_cpu:.0f}", f"{run_wall:.0f}"),
        ("single run, self-tuned", [run.root], run.root / "postprocess.yml", f"{run_cpu:.0f}", f"{run_wall:.0f}"),
        (f"{args.folds}-fold study, tuned out-of-fold", *round_runs(paths, 0), "",
         f"{round_seconds(paths, 0):.0f}"),
        ("study + 1 pseudo-label round", *round_runs(paths, 1), f"{study_cpu:.0f} (both rounds)",
         f"{round_seconds(paths, 0) + round_seconds(paths, 1):.0f}"),
    ]
    pseudo = record["rounds"][0]
    if "score" not in pseudo:  # the rule kept no image: the study ended with round 0
        rows.pop()
    print(f"NEU-Seg: {args.pool} labelled, {args.unlabelled} unlabelled, {args.test} test images; single run budget "
          f"{args.budget}, study 2 x {args.budget} over {2 * args.folds} fold runs; pseudo-labels kept "
          f"{pseudo.get('pseudo_images', 0)} of {args.unlabelled} (per class "
          f"{pseudo.get('pseudo_class_images', '-')}); out-of-fold scores: round 0 {record['score']:.4f}, "
          f"round 1 {pseudo['score'] if 'score' in pseudo else 'none'}")
    header = f"{'':<40} {'test metric':>11}  {'Dice per class':<24} {'CPU s':>18} {'wall s':>7}"
    print(header)
    for index, (name, models, postprocess, cpu_seconds, wall_seconds) in enumerate(rows):
        result = score(models, postprocess, parts["test"], out / f"row{index}.csv")
        per_class = " ".join(f"{value:.4f}" for value in result.class_dice)
        print(f"{name:<40} {result.mean_dice:>11.4f}  {per_class:<24} {cpu_seconds:>18} {wall_seconds:>7}")
    print(f"everything in {out}")


if __name__ == "__main__":
    main_()
