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

    python benchmarks/label_issues.py --data ../shared/data/neu-seg --images 300 --side 100 --epochs 4  # small
    python benchmarks/label_issues.py --data ../shared/data/neu-seg --images 3630 --epochs 30           # all of it
    python benchmarks/label_issues.py --study OUT/saved/neu-seg/STAMP     # rank an earlier run's study again

Figures of one small run on a CPU shared by several processes (``--images 200 --side 64 --epochs 3
--batch-size 8``, 2 folds; the folds' validation Dice: patches 0.50, inclusion and scratches about
0.02, so only patches were learnt): 10 corrupted images (4 drop, 3 move, 3 blob); recall 20% in the
top 5% (chance 5%, lift 4.0), 20% in the top 10% (lift 2.0), 30% in the top 20% (lift 1.5); 2 of the
3 moves found in the top 5%, no drop (a dropped mask is only found where the model finds the defect).
Ten corrupted images are too few for a firm figure and a model this weak flags 198 of 200 images:
run the larger command on a quiet machine.
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
from sever.study.folder import StudyPaths
from sever.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLASSES, SIDE = 3, 200  # NEU-Seg images are 200x200
CUT_OFFS = (0.05, 0.10, 0.20)
EXPECTED_KIND = {"drop": "missing mask", "move": "wrong class", "blob": "spurious mask"}


def subset(data: Path, out: Path, images: int, side: int, seed: int) -> tuple[Path, Annotations]:
    """``out/train_images``: ``images`` seeded NEU-Seg images (symlinks, or shrunk to ``side`` pixels
    square, masks alike by nearest neighbour) and their annotations."""
    names = sorted(p.name for p in (data / "train_images").iterdir())
    chosen = sorted(names[i] for i in np.random.default_rng(seed).permutation(len(names))[:images])
    (out / "train_images").mkdir(parents=True)
    every = read_rle_csv(data / "train.csv", CLASSES, image_ids=chosen)  # the chosen first, then the rest
    labels = every.subset(np.arange(len(chosen)))
    if side == SIDE:
        for name in chosen:
            (out / "train_images" / name).symlink_to((data / "train_images" / name).resolve())
        return out, labels
    encodings = labels.encodings.copy()
    for position, name in enumerate(chosen):
        image = cv2.imread(str(data / "train_images" / name), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(out / "train_images" / name), cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        for c in np.flatnonzero(encodings[position] != ""):
            mask = rle_decode(encodings[position, c], (SIDE, SIDE))
            encodings[position, c] = rle_encode(cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST))
    return out, Annotations(labels.image_ids, encodings, labels.rows, labels.source)


def blob(rng: np.random.Generator, side: int) -> np.ndarray:
    """A filled ellipse ``(side, side)`` uint8 of about 0.8..4% of the image at a random place and angle."""
    mask = np.zeros((side, side), np.uint8)
    axes = (max(2, round(rng.uniform(0.05, 0.125) * side)), max(2, round(rng.uniform(0.04, 0.1) * side)))
    centre = (int(rng.integers(side // 7, side - side // 7)), int(rng.integers(side // 7, side - side // 7)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def corrupt(annotations: Annotations, share: float, side: int, seed: int) -> tuple[Annotations, list[tuple[str, int, str]]]:
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
            encodings[position, c] = rle_encode(blob(rng, side))
        record.append((annotations.image_ids[position], c, kind))
    return Annotations(annotations.image_ids, encodings, annotations.rows, annotations.source), record


def study_config(data_dir: Path, save_dir: Path, budget: str | None, epochs: int, batch_size: int, side: int,
                 device: str = "cpu") -> dict:
    """experiments/neu-seg.yml on ``data_dir`` on ``device``, cropped to ``side`` rounded down to 32, for
    ``epochs`` or within ``budget`` (then ``epochs`` only bounds it)."""
    config = load_config(REPO / "experiments" / "neu-seg.yml")
    config["save_dir"], config["device"] = str(save_dir), device
    config["data_loader"]["args"].update(data_dir=str(data_dir), num_workers=0, batch_size=batch_size)
    config["augmentation"]["args"].update(height=side // 32 * 32, width=side // 32 * 32)
    config["trainer"].update(epochs=epochs, tensorboard=False, save_period=epochs, report_images=0)
    if budget:
        config["trainer"]["time_budget"] = budget
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
    parser.add_argument("--side", type=int, default=SIDE, help="images shrunk to this many pixels square")
    parser.add_argument("--budget", default=None, help="the study's wall-clock time budget (all folds), e.g. 20m; "
                                                       "without it every fold trains --epochs")
    parser.add_argument("--epochs", type=int, default=10, help="each fold's epochs (with --budget: an upper bound)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the folds train (cpu, cuda, auto)")
    parser.add_argument("--out", type=Path, default=None, help="working folder [default: a new temporary one]")
    parser.add_argument("--study", type=Path, default=None,
                        help="rank an existing study of an earlier run's --out again (no training)")
    args = parser.parse_args(argv)
    if args.study is not None:
        out, paths = args.study.parents[2], StudyPaths(args.study)  # OUT/saved/NAME/STUDY
        with open(out / "corrupted.csv", newline="") as handle:
            record = [(image, int(c), kind) for image, c, kind in list(csv.reader(handle))[1:]]
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="label-issues-"))
        data_dir, clean = subset(args.data, out / "data", args.images, args.side, args.seed)
        labels, record = corrupt(clean, args.share, args.side, args.seed + 1)
        write_rle_csv(data_dir / "train.csv", labels, "train")
        with open(out / "corrupted.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("image", "class", "kind"), *record])
        paths = study.train_study(study_config(data_dir, out / "saved", args.budget, args.epochs, args.batch_size,
                                               args.side, args.device), args.folds)
    result = study_label_issues(paths.root)
    images = sum(len(saved.names) for saved, _ in result.sources)
    trained = f"{args.budget or f'{args.epochs} epochs a fold'} on {args.device}" if args.study is None else args.study
    write_issues_csv(result.issues, result.class_names, out / "label_issues.csv")
    write_issue_gallery(result, out, max_images=60)
    ranking = image_ranking(result.issues)

    print(f"NEU-Seg: {images} images, {len(record)} corrupted ({args.share:.0%}: "
          + ", ".join(f"{sum(k == kind for *_, k in record)} {kind}" for kind in ("drop", "move", "blob"))
          + f"); {paths.folds}-fold study ({trained}), "
          f"out-of-fold score "
          f"{paths.round_record().get('score', float('nan')):.4f}")
    print(f"{len(ranking)} of {images} images have a suspect label; recall of the corrupted images "
          f"in the top of the ranking (chance = the cut-off):")
    for line in recall_table(ranking, record, images):
        print(line)
    print(kind_agreement(result.issues, record))
    print(f"everything in {out} (corrupted.csv, label_issues.csv, gallery.html)")


if __name__ == "__main__":
    main()
