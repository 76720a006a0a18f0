"""How well ``sever label-issues`` finds known wrong labels: NEU-Seg with 5% of its labels corrupted.

A seeded subset of NEU-Seg is copied (symlinks) with its ``train.csv``, and a known share of its
images gets one wrong label each, in turn:

- **drop**: one of the image's masks removed (a missing mask);
- **move**: one mask moved to a class the image lacks (a wrong class);
- **blob**: an elliptic blob of a class the image lacks added where the image shows nothing of that
  class (a spurious mask).

A K-fold study of experiments/neu-seg.yml trains on the corrupted labels within ``--budget``
(wall-clock, shared by its folds), and ``sever label-issues`` ranks its images from the
out-of-fold probabilities. Printed: the recall of the corrupted images among the top 5%, 10% and
20% of the ranking against chance (a random ranking's expected recall is the cut-off itself),
per corruption kind, and how often the kind named matches the corruption.

    python benchmarks/label_issues.py --data ../shared/data/neu-seg --images 400 --budget 6m   # small
    python benchmarks/label_issues.py --data ../shared/data/neu-seg --images 3630 --budget 60m  # all of it
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from pathlib import Path

import cv2
import numpy as np

from sever.data_loader.annotations import Annotations, read_rle_csv, write_rle_csv
from sever.data_loader.rle import rle_decode, rle_encode
from sever.inference.label_issues import image_ranking, study_label_issues, write_issues_csv
from sever.report.label_issues import write_issue_gallery
from sever.study import train as study
from sever.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLASSES, SHAPE = 3, (200, 200)
CUT_OFFS = (0.05, 0.10, 0.20)
EXPECTED_KIND = {"drop": "missing mask", "move": "wrong class", "blob": "spurious mask"}


def subset(data: Path, out: Path, images: int, seed: int) -> tuple[Path, Annotations]:
    """``out/train_images`` (symlinks to ``images`` seeded NEU-Seg images) and their annotations."""
    names = sorted(p.name for p in (data / "train_images").iterdir())
    chosen = sorted(names[i] for i in np.random.default_rng(seed).permutation(len(names))[:images])
    (out / "train_images").mkdir(parents=True)
    for name in chosen:
        (out / "train_images" / name).symlink_to((data / "train_images" / name).resolve())
    every = read_rle_csv(data / "train.csv", CLASSES, image_ids=chosen)  # the chosen first, then the rest
    return out, every.subset(np.arange(len(chosen)))


def blob(rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse ``(H, W)`` uint8 of 300..1500 pixels at a random place and angle."""
    mask = np.zeros(SHAPE, np.uint8)
    axes = (int(rng.integers(10, 25)), int(rng.integers(8, 20)))
    centre = (int(rng.integers(30, SHAPE[1] - 30)), int(rng.integers(30, SHAPE[0] - 30)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def corrupt(annotations: Annotations, share: float, seed: int) -> tuple[Annotations, list[tuple[str, int, str]]]:
    """``annotations`` with ``share`` of the images given one wrong label each; the record
    ``[(image, class changed, kind)]`` (drop, move and blob in turn)."""
    rng = np.random.default_rng(seed)
    encodings = annotations.encodings.copy()
    victims = rng.choice(len(annotations), size=max(1, round(share * len(annotations))), replace=False)
    record = []
    for turn, position in enumerate(sorted(victims.tolist())):
        present = np.flatnonzero(encodings[position] != "")
        absent = np.flatnonzero(encodings[position] == "")
        kind = ("drop", "move", "blob")[turn % 3]
        if kind != "drop" and not len(absent):
            kind = "drop"
        if kind in ("drop", "move") and not len(present):
            kind = "blob"
        if kind == "drop":
            c = int(rng.choice(present))
            encodings[position, c] = ""
        elif kind == "move":
            source, c = int(rng.choice(present)), int(rng.choice(absent))
            encodings[position, c], encodings[position, source] = encodings[position, source], ""
        else:
            c = int(rng.choice(absent))
            encodings[position, c] = rle_encode(blob(rng))
        record.append((annotations.image_ids[position], c, kind))
    return Annotations(annotations.image_ids, encodings, annotations.rows, annotations.source), record


def study_config(data_dir: Path, save_dir: Path, budget: str, epochs: int, batch_size: int) -> dict:
    """experiments/neu-seg.yml on ``data_dir`` on the CPU within ``budget`` (``epochs`` only bounds it)."""
    config = load_config(REPO / "experiments" / "neu-seg.yml")
    config["save_dir"], config["device"] = str(save_dir), "cpu"
    config["data_loader"]["args"].update(data_dir=str(data_dir), num_workers=0, batch_size=batch_size)
    config["trainer"].update(epochs=epochs, tensorboard=False, save_period=epochs, time_budget=budget,
                             report_images=0)
    config["lr_scheduler"]["args"]["n_epochs"] = epochs
    return config


def recall_table(ranking: list[str], record: list[tuple[str, int, str]], images: int) -> list[str]:
    """Lines: per cut-off, the corrupted images found in the top share against chance, overall and per kind."""
    kinds = sorted({kind for _, _, kind in record})
    lines = [f"{'top':>5} {'images':>6}  {'recall':>7} {'chance':>7} {'lift':>5}  "
             + "  ".join(f"{kind:>10}" for kind in kinds)]
    for share in CUT_OFFS:
        top = set(ranking[:math.ceil(share * images)])
        found = [image in top for image, _, _ in record]
        per_kind = []
        for kind in kinds:
            hits = [f for f, (_, _, k) in zip(found, record) if k == kind]
            per_kind.append(f"{sum(hits):>3}/{len(hits):<3} ")
        recall = sum(found) / len(record)
        lines.append(f"{share:>5.0%} {math.ceil(share * images):>6}  {recall:>7.1%} {share:>7.0%} "
                     f"{recall / share:>5.1f}  " + "  ".join(f"{p:>10}" for p in per_kind))
    return lines


def kind_agreement(issues, record) -> str:
    """How many corrupted (image, class) pairs are listed with the kind their corruption makes."""
    listed = {(issue.image, issue.class_index): issue.kind for issue in issues}
    right = sum(listed.get((image, c)) == EXPECTED_KIND[kind] for image, c, kind in record)
    any_kind = sum((image, c) in listed for image, c, _ in record)
    return (f"corrupted (image, class) pairs listed: {any_kind}/{len(record)}, with the expected kind: "
            f"{right}/{len(record)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "neu-seg")
    parser.add_argument("--images", type=int, default=400, help="NEU-Seg images in the study")
    parser.add_argument("--share", type=float, default=0.05, help="share of the images given a wrong label")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--budget", default="6m", help="the study's wall-clock time budget (all folds)")
    parser.add_argument("--max-epochs", type=int, default=100, help="an upper bound the budget stops before")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="working folder [default: a new temporary one]")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="label-issues-"))
    data_dir, clean = subset(args.data, out / "data", args.images, args.seed)
    labels, record = corrupt(clean, args.share, args.seed + 1)
    write_rle_csv(data_dir / "train.csv", labels, "train")
    with open(out / "corrupted.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "class", "kind"), *record])

    paths = study.train_study(study_config(data_dir, out / "saved", args.budget, args.max_epochs, args.batch_size),
                              args.folds)
    result = study_label_issues(paths.root)
    write_issues_csv(result.issues, result.class_names, out / "label_issues.csv")
    write_issue_gallery(result, out, max_images=60)
    ranking = image_ranking(result.issues)

    print(f"NEU-Seg: {args.images} images, {len(record)} corrupted ({args.share:.0%}: "
          + ", ".join(f"{sum(k == kind for *_, k in record)} {kind}" for kind in ("drop", "move", "blob"))
          + f"); {args.folds}-fold study within {args.budget} on the CPU, out-of-fold score "
          f"{paths.round_record().get('score', float('nan')):.4f}")
    print(f"{len(ranking)} of {args.images} images have a suspect label; recall of the corrupted images "
          f"in the top of the ranking (chance = the cut-off):")
    for line in recall_table(ranking, record, args.images):
        print(line)
    print(kind_agreement(result.issues, record))
    print(f"everything in {out} (corrupted.csv, label_issues.csv, gallery.html)")


if __name__ == "__main__":
    main()
