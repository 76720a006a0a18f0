"""Learning curves: validation defect Dice every N optimiser steps, when it leaves the floor and settles, and the
learning rule's constants fitted to them (issue 27, part 1; the rule is ``sever.planning.need``).

For each dataset and each variant of it, the planner's own experiment (``sever plan`` on the CPU) trains with a
flat learning rate and ``trainer.max_steps_per_epoch: N``, so each "epoch" is N optimiser steps followed by a
validation pass on the planned split; no time budget, no self-tuning, no report. Per point the validation
``dice_defect`` of every class is read back from train.log. Then, per run:

- **leaves the floor**: the first point from which the defect Dice of the class the rule says is hardest stays
  at or above 0.1 (``sever.inference.learning.LEARNED_GAIN``) for 3 points in a row;
- **settles**: the first point reaching 90% of the best defect Dice the run ever logged.

The rule (``PlanPolicy.learn_*``) says a run needs ``learn_crops * max(1, f_ref / f) ** a * max(1, c_ref / c) ** b``
crops before the floor, for the hardest class's image share ``f`` and crop cover ``c``. The fit is a least-squares
line in logs over every run that left the floor: ``log(crops) = log(learn_crops) + a log(rarity) + b log(size)``
(only ``learn_crops`` with fewer than 4 such runs, or when the factors do not vary). It prints the fields to put
in ``sever/planning/policy.py``, and writes every curve to ``--out`` (JSON) for the note.

Variants (made from the Kaggle-layout source, images symlinked, labels rewritten):

- ``base``: as it is (``--subset`` images at most);
- ``rarer``: of the images showing the rarest class, only one in ``--rarer`` kept;
- ``smaller``: every image and mask shrunk by ``--shrink`` per side, pasted on its own median grey at its old size
  (same image size, defects ``--shrink``\\ :sup:`2` times fewer pixels);
- ``emptier``: the defect-free images repeated (flipped) until they are ``--empty`` of the set;
- ``smallcrop``: the base data trained on the first smaller crop the learning rules would plan
  (``sever.planning.sizing.smaller_crops``: about half the pixels), which tests the rule's claim that a defect
  covering more of a crop needs fewer crops.

The real measurement (idle machine; hours: each run is up to POINTS x (N steps + a validation)):

    python benchmarks/learning_curves.py --data demo --data ../shared/data/neu-seg --subset 600 \\
        --variants base,rarer,smaller,emptier --steps 25 --points 40 --seeds 0,1 --out learning_curves.json

Smoke run (minutes):

    python benchmarks/learning_curves.py --data demo --demo-images 24 --demo-size 64x256 --variants base,smaller \\
        --steps 2 --points 3 --out /tmp/curves.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from sever import experiment
from sever.data_loader.demo import make_demo_data
from sever.data_loader.rle import rle_decode, rle_encode
from sever.inference.learning import LEARNED_GAIN
from sever.planning.fingerprint import fingerprint
from sever.planning.need import crop_cover, crops_needed
from sever.planning.plan import make_plan
from sever.planning.policy import DEFAULT_POLICY
from sever.planning.probe import device_target
from sever.planning.sizing import smaller_crops
from sever.report.history import read_history

# ----------------------------------------------------------------------------- datasets and their variants


def read_rows(data: Path) -> list[list[str]]:
    with open(data / "train.csv", newline="") as handle:
        return list(csv.reader(handle))[1:]


def write_set(out: Path, images: dict[str, Path], rows: list[list[str]]) -> Path:
    """A Kaggle-layout folder: ``images`` (name -> file, symlinked) and the CSV ``rows`` of those images."""
    (out / "train_images").mkdir(parents=True)
    for name, source in images.items():
        (out / "train_images" / name).symlink_to(source.resolve())
    with open(out / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["ImageId", "ClassId", "EncodedPixels"],
                                      *(row for row in rows if row[0] in images)])
    return out


def subset(data: Path, out: Path, count: int | None, seed: int) -> Path:
    names = sorted(p.name for p in (data / "train_images").iterdir())
    if count is not None and count < len(names):
        names = sorted(np.random.default_rng(seed).choice(names, count, replace=False))
    return write_set(out, {n: data / "train_images" / n for n in names}, read_rows(data))


def rarer(data: Path, out: Path, keep_one_in: int) -> Path:
    """Of the images showing the rarest class, only every ``keep_one_in``-th kept."""
    rows = [r for r in read_rows(data) if r[2].strip()]
    counts: dict[str, set[str]] = {}
    for name, class_id, _ in rows:
        counts.setdefault(class_id, set()).add(name)
    rarest = min(counts, key=lambda k: len(counts[k]))
    dropped = set(sorted(counts[rarest])[i] for i in range(len(counts[rarest])) if i % keep_one_in)
    images = {p.name: p for p in (data / "train_images").iterdir() if p.name not in dropped}
    return write_set(out, images, read_rows(data))


def smaller(data: Path, out: Path, shrink: float) -> Path:
    """Every image and its masks shrunk ``shrink`` times per side onto its own median grey, same size."""
    (out / "train_images").mkdir(parents=True)
    by_image: dict[str, list[list[str]]] = {}
    for row in read_rows(data):
        by_image.setdefault(row[0], []).append(row)
    rows = []
    for path in sorted((data / "train_images").iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        h, w = image.shape
        small = (max(1, round(w / shrink)), max(1, round(h / shrink)))
        canvas = np.full_like(image, int(np.median(image)))
        canvas[:small[1], :small[0]] = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / "train_images" / (path.stem + ".png")), canvas)
        for _, class_id, encoded in by_image.get(path.name, []):
            mask = rle_decode(encoded, (h, w))
            placed = np.zeros_like(mask)
            placed[:small[1], :small[0]] = cv2.resize(mask, small, interpolation=cv2.INTER_NEAREST)
            if placed.any():
                rows.append([path.stem + ".png", class_id, rle_encode(placed)])
    with open(out / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["ImageId", "ClassId", "EncodedPixels"], *rows])
    return out


def emptier(data: Path, out: Path, share: float) -> Path:
    """The defect-free images repeated, flipped, until they make ``share`` of the set."""
    shown = {r[0] for r in read_rows(data) if r[2].strip()}
    paths = sorted((data / "train_images").iterdir())
    empty = [p for p in paths if p.name not in shown]
    write_set(out, {p.name: p for p in paths}, read_rows(data))
    if not empty:
        return out
    extra = max(0, math.ceil((share * len(paths) - len(empty)) / (1 - share)))
    for i in range(extra):
        source = empty[i % len(empty)]
        flipped = cv2.flip(cv2.imread(str(source), cv2.IMREAD_GRAYSCALE), i % 3 - 1)
        cv2.imwrite(str(out / "train_images" / f"empty{i:05d}_{source.stem}.png"), flipped)
    return out


VARIANTS = {"base": lambda data, out, args: data, "rarer": lambda data, out, args: rarer(data, out, args.rarer),
            "smaller": lambda data, out, args: smaller(data, out, args.shrink),
            "emptier": lambda data, out, args: emptier(data, out, args.empty),
            "smallcrop": lambda data, out, args: data}  # the base data trained on smaller crops (one_curve)


# ----------------------------------------------------------------------------- one curve


@dataclass
class Curve:
    dataset: str
    variant: str
    seed: int
    images: int
    batch: int
    hardest: str
    share: float  # the hardest class's image share
    cover: float  # its crop cover
    steps: list[int]
    defect_mean: list[float]
    hardest_dice: list[float]
    floor_step: int | None
    settle_step: int | None


STAYING = 3  # points in a row at or above the floor: one validation of a few dozen images is noisy


def first_staying(steps: list[int], values: list[float], level: float, points: int = STAYING) -> int | None:
    """The first step from which ``values`` stay at or above ``level`` for ``points`` points in a row (fewer at
    the end of the curve: the points there are)."""
    for i in range(len(values)):
        if all(value >= level for value in values[i:i + points]):
            return steps[i]
    return None


def measured(curve: Curve) -> Curve:
    """``curve`` with its floor and settling steps found again from its series (an earlier run's, by today's
    definitions)."""
    values = curve.hardest_dice or curve.defect_mean
    return dataclasses.replace(curve, floor_step=first_staying(curve.steps, values, LEARNED_GAIN),
                               settle_step=settled(curve.steps, values))


def settled(steps: list[int], values: list[float], share: float = 0.9) -> int | None:
    if not values or max(values) < LEARNED_GAIN:
        return None
    return next(s for s, v in zip(steps, values) if v >= share * max(values))


class NoSmallerCrop(Exception):
    """The ``smallcrop`` variant of a dataset whose crop the learning rules would keep."""


def planned_config(data: Path, save_dir: Path, seed: int, steps: int, points: int,
                   smaller_crop: bool = False) -> tuple[dict, object]:
    """The planner's experiment for ``data`` on the CPU (planned for epochs: the image's own crop), trained flat
    for ``points`` x ``steps`` steps; ``smaller_crop``: at the first crop the learning rules would shrink it to."""
    fp = fingerprint(data)
    plan = make_plan(fp, device_target("cpu", len(fp.classes), fp), 3600, data.name, seed,
                     policy=dataclasses.replace(DEFAULT_POLICY, plan_to_learn=False))
    config = plan.config
    if smaller_crop:
        crop = (config["augmentation"]["args"]["height"], config["augmentation"]["args"]["width"])
        smaller = smaller_crops(fp, crop)
        if not smaller:
            raise NoSmallerCrop(f"{data}: the learning rules would not shrink its {crop[0]}x{crop[1]} crop (the floor "
                                "or the defects' extent)")
        config["augmentation"]["args"]["height"], config["augmentation"]["args"]["width"] = smaller[0]
    config["save_dir"] = str(save_dir)
    config["data_loader"]["args"]["num_workers"] = 0
    config["lr_scheduler"] = {"type": "FlatCosineAnnealing", "args": {"start_anneal": points + 1,
                                                                       "n_epochs": points + 2}}
    config["trainer"].update(epochs=points, max_steps_per_epoch=steps, time_budget=None, tune_postprocess=False,
                             report_images=0, tensorboard=False, save_period=points)
    return config, fp


def one_curve(name: str, variant: str, data: Path, work: Path, seed: int, steps: int, points: int) -> Curve:
    config, fp = planned_config(data, work / "runs", seed, steps, points, smaller_crop=variant == "smallcrop")
    run = experiment.train(config)
    history = read_history(run)
    epochs, mean = history.series("val_dice_defect_mean")
    crop = (config["augmentation"]["args"]["height"], config["augmentation"]["args"]["width"])
    _, hardest = crops_needed(fp, crop)  # the class the rule says sets the need
    k = fp.classes.index(hardest)
    _, hard = history.series(f"val_dice_defect_{k}")
    at = [e * steps for e in epochs]  # epochs are numbered from 1
    return Curve(name, variant, seed, fp.images, config["data_loader"]["args"]["batch_size"], hardest.name,
                 hardest.frequency, crop_cover(hardest, fp, crop), at, mean, hard,
                 first_staying(at, hard or mean, LEARNED_GAIN), settled(at, hard or mean))


# ----------------------------------------------------------------------------- the fit


def fit(curves: list[Curve]) -> dict:
    """``learn_crops`` (and the exponents when 4+ runs left the floor with varying factors), least squares in logs."""
    policy = DEFAULT_POLICY
    left = [c for c in curves if c.floor_step is not None]
    if not left:
        return {"note": "no run left the floor: train more steps (--points) before fitting"}
    crops = np.log([c.floor_step * c.batch for c in left])
    rarity = np.log([max(1.0, policy.learn_frequency / max(c.share, 1e-6)) for c in left])
    size = np.log([max(1.0, policy.learn_cover / max(c.cover, 1e-6)) for c in left])
    design = np.stack([np.ones_like(crops), rarity, size], axis=1)
    if len(left) >= 4 and np.linalg.matrix_rank(design) == 3:
        (base, a, b), *_ = np.linalg.lstsq(design, crops, rcond=None)
        return {"learn_crops": float(np.exp(base)), "learn_rarity_power": float(a), "learn_size_power": float(b),
                "runs": len(left)}
    base = float(np.mean(crops - policy.learn_rarity_power * rarity - policy.learn_size_power * size))
    return {"learn_crops": float(np.exp(base)), "runs": len(left),
            "note": "exponents kept (too few runs left the floor, or their factors do not vary)"}


def plot(curves: list[Curve], path: Path) -> None:
    """Each curve's hardest-class defect Dice against the crops seen, the floor drawn and where each left it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5))
    for curve in curves:
        crops = [step * curve.batch for step in curve.steps]
        line, = axes.plot(crops, curve.hardest_dice or curve.defect_mean, marker="o", markersize=3,
                          label=f"{curve.dataset} {curve.variant} ({curve.share:.0%} of images, {curve.cover:.1%} "
                                f"of a crop)")
        if curve.floor_step is not None:
            axes.axvline(curve.floor_step * curve.batch, color=line.get_color(), linestyle=":", linewidth=1)
    axes.axhline(LEARNED_GAIN, color="grey", linestyle="--", linewidth=1, label="floor (0.1)")
    axes.set(xlabel="training crops seen", ylabel="validation defect Dice of the hardest class",
             title="Learning curves (flat learning rate); dotted: where each left the floor")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------- main


def source(name: str, work: Path, args) -> Path:
    """``demo`` (the demo data), ``demo-mixed`` (the same with every image its own size) or a folder."""
    if name in ("demo", "demo-mixed"):
        height, width = (int(v) for v in args.demo_size.split("x"))
        return make_demo_data(work / name, n_train=args.demo_images, n_test=1, height=height, width=width, seed=0,
                              mixed_sizes=name == "demo-mixed")
    return Path(name)


def add_dataset_options(parser: argparse.ArgumentParser, variants: str) -> None:
    """The options naming the datasets and their variants (``benchmarks/plan_to_learn.py`` takes them too)."""
    parser.add_argument("--data", action="append", default=[],
                        help="'demo', 'demo-mixed' (mixed image sizes) or a Kaggle-layout folder (e.g. "
                             "../shared/data/neu-seg); repeatable")
    parser.add_argument("--variants", default=variants, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--subset", type=int, default=None, help="images per dataset at most")
    parser.add_argument("--demo-images", type=int, default=256)
    parser.add_argument("--demo-size", default="256x1600")
    parser.add_argument("--rarer", type=int, default=4)
    parser.add_argument("--shrink", type=float, default=2.0)
    parser.add_argument("--empty", type=float, default=0.8)


def variant_sets(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, str, Path, Path]]:
    """``(dataset name, variant, its folder, a work folder of the dataset)`` for each ``--data`` and ``--variants``."""
    for d, name in enumerate(args.data):
        base = subset(source(name, work / f"src{d}", args), work / f"set{d}" / "base", args.subset, 0)
        for variant in args.variants.split(","):
            yield Path(name).name, variant, VARIANTS[variant](base, work / f"set{d}" / variant, args), work / f"set{d}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_options(parser, "base,rarer,smaller,emptier")
    parser.add_argument("--steps", type=int, default=25, help="optimiser steps between two validations")
    parser.add_argument("--points", type=int, default=40, help="validations per run")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("learning_curves.json"))
    parser.add_argument("--plot", type=Path, default=None, help="a PNG of the curves")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="a --out file of an earlier run: its curves join this run's fit; repeatable")
    args = parser.parse_args(argv)
    curves = [measured(Curve(**curve)) for earlier in args.merge for curve in json.loads(earlier.read_text())["curves"]]
    with tempfile.TemporaryDirectory(prefix="curves-") as tmp:
        for name, variant, data, folder in variant_sets(args, Path(tmp)):
            for seed in (int(s) for s in args.seeds.split(",")):
                try:
                    curve = one_curve(name, variant, data, folder / f"{variant}-{seed}", seed, args.steps,
                                      args.points)
                except NoSmallerCrop as skipped:
                    print(f"skipped: {skipped}", flush=True)
                    continue
                curves.append(curve)
                args.out.write_text(json.dumps({"curves": [asdict(c) for c in curves]}, indent=1))  # so far
                print(f"{curve.dataset:>10} {variant:>8} seed {seed}: {curve.images} images, batch {curve.batch}, "
                      f"hardest {curve.hardest} ({curve.share:.1%} of images, {curve.cover:.2%} of a crop): "
                      f"floor left at {curve.floor_step} steps, settled at {curve.settle_step}; defect Dice "
                      + " ".join(f"{s}:{v:.2f}" for s, v in zip(curve.steps, curve.hardest_dice or
                                                                 curve.defect_mean)), flush=True)
    print(f"{'dataset':>12} {'variant':>9} {'images':>6} {'batch':>5} {'share':>6} {'cover':>6} {'rule':>6} "
          f"{'floor':>6} {'settled':>7}  (crops; floor and settled: steps x batch)")
    for curve in curves:
        policy = DEFAULT_POLICY
        rule = (max(1.0, policy.learn_frequency / max(curve.share, 1e-6)) ** policy.learn_rarity_power
                * max(1.0, policy.learn_cover / max(curve.cover, 1e-6)) ** policy.learn_size_power * policy.learn_crops)
        crops = [None if step is None else step * curve.batch for step in (curve.floor_step, curve.settle_step)]
        print(f"{curve.dataset:>12} {curve.variant:>9} {curve.images:>6} {curve.batch:>5} {curve.share:>6.1%} "
              f"{curve.cover:>6.2%} {rule:>6.0f} {str(crops[0]):>6} {str(crops[1]):>7}")
    if args.plot is not None:
        plot(curves, args.plot)
    fitted = fit(curves)
    print("fitted:", json.dumps(fitted))
    args.out.write_text(json.dumps({"curves": [asdict(c) for c in curves], "fit": fitted}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
