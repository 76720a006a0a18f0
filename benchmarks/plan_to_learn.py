"""Two planners of ``sever auto`` scored on held-out images at the same budgets, seeds and splits (issue 27).

``--compare learn`` (the default): the plan with and without the learning rules (``PlanPolicy.plan_to_learn``).
``--compare final``: a study with a final model on every image predicting (``PlanPolicy.final_model_epochs`` 0:
wherever one fits) against the fold ensemble alone (``final_model_epochs`` infinite); the final model's study is
also scored with its own folds' ensemble (``its folds``: the same folds, trained on the shares the final model
left). The plan of today's rule is one of the two.

For each dataset and each variant of it (``benchmarks/learning_curves.py``'s: ``base``, ``rarer``, ``smaller``,
``emptier``), a share of the images is held out from everything. On the rest, both planners plan at each budget
on the same measured device (one :class:`~sever.planning.probe.Target`, its step times measured once). Where the
two experiment files plan the same config, the runs would be the same: the row says so and nothing trains. Where
they differ, each plan trains as ``sever auto`` does (the budget counting from before its planning), predicts
the held-out images with its tuned post-processing, and is scored there: competition metric (mean Dice over
image-class pairs), per-class Dice, and how many classes the run itself said it had not learned.

The note's table (idle 2-core CPU; the demo budget is ``sever train -c experiments/demo.yml``'s wall time,
about 2 minutes):

    python benchmarks/plan_to_learn.py --data demo --data demo-mixed --data ../shared/data/neu-seg \\
        --subset 600 --variants base,rarer,smaller,emptier --budgets 2m,7m,20m --out plan_to_learn.json

Smoke run (minutes):

    python benchmarks/plan_to_learn.py --data demo --demo-images 48 --demo-size 64x256 --variants base \\
        --budgets 1m --out /tmp/plan_to_learn.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

from learning_curves import add_dataset_options, variant_sets  # benchmarks/ is on sys.path when run
from neu_seg_study import split
from plan_auto import held_out_score

from sever.planning.fingerprint import fingerprint
from sever.planning.plan import PlanError, make_plan
from sever.planning.policy import DEFAULT_POLICY
from sever.planning.probe import device_target
from sever.study.auto import run_auto
from sever.study.folder import StudyPaths
from sever.utils.time_budget import Deadline, parse_budget

PLANNER_SETS = {
    "learn": {"learn first": DEFAULT_POLICY, "epochs only": dataclasses.replace(DEFAULT_POLICY, plan_to_learn=False)},
    "final": {"final model": dataclasses.replace(DEFAULT_POLICY, final_model_epochs=0.0),
              "fold ensemble": dataclasses.replace(DEFAULT_POLICY, final_model_epochs=math.inf)},
}


def plan_summary(plan) -> str:
    """The planned choices the learning rules change, in a few words."""
    args = plan.config["augmentation"]["args"]
    return (f"{plan.folds} fold(s){' + final model' if plan.config.get('final_model') else ''}, crop "
            f"{args['height']}x{args['width']}, batch {plan.config['data_loader']['args']['batch_size']}; "
            f"{plan.learning.given:.0f} of {plan.learning.needed:.0f} steps")


def planned(fp, target, seconds: float, name: str, seed: int, policy):
    """The plan, or why the planner refused the budget."""
    try:
        return make_plan(fp, target, seconds, name, seed, policy=policy)
    except PlanError as refused:
        return f"refused: {refused}"


def compare(name: str, data: Path, work: Path, budgets: list[str], held_out: float, seed: int,
            plans_only: bool = False, only: set[str] | None = None, planners: dict | None = None) -> list[dict]:
    """Both ``planners`` (label -> policy; default: ``PLANNER_SETS["learn"]``) on ``data`` at each budget; one row per
    budget (``plans_only``: plan, train nothing; ``only``: train only these ``dataset/variant@budget`` cells)."""
    planners = planners or PLANNER_SETS["learn"]
    first = next(iter(planners))
    images = sum(1 for _ in (data / "train_images").iterdir())
    held = max(1, round(held_out * images))
    parts = split(data, work / "parts", {"held_out": held, "train": images - held}, seed=seed)
    fp = fingerprint(parts["train"])
    target = device_target("cpu", len(fp.classes), fp)  # measured once: both planners see the same steps
    classes, run_name = len(fp.classes), name.replace("/", "-")
    rows = []
    for budget in budgets:
        seconds = parse_budget(budget)
        row = {"dataset": name, "budget": budget, "held_out": held, "train": images - held}
        plans = {label: planned(fp, target, seconds, run_name, seed, policy) for label, policy in planners.items()}
        row["plans"] = {label: plan if isinstance(plan, str) else plan_summary(plan) for label, plan in plans.items()}
        if all(isinstance(plan, str) for plan in plans.values()):
            rows.append({**row, "same_plan": True})
            print(f"{name:>22} {budget:>4}: refused by both: {row['plans'][first]}", flush=True)
            continue
        if len({plan if isinstance(plan, str) else json.dumps(plan.config, sort_keys=True)
                for plan in plans.values()}) == 1:  # the same config trains the same runs, whatever the reasons
            row["same_plan"] = True
            rows.append(row)
            print(f"{name:>22} {budget:>4}: the same plan ({row['plans'][first]}): nothing to train", flush=True)
            continue
        if plans_only or (only is not None and f"{name}@{budget}" not in only):
            rows.append({**row, "same_plan": False})
            print(f"{name:>22} {budget:>4}: " + "; ".join(f"{k}: {v}" for k, v in row["plans"].items()), flush=True)
            continue
        row["same_plan"], row["scores"] = False, {}
        for label, policy in planners.items():
            if isinstance(plans[label], str):  # refused: nothing to predict with
                row["scores"][label] = {"metric": None, "refused": plans[label]}
                print(f"{name:>22} {budget:>4} {label:>11}: refused ({plans[label]})", flush=True)
                continue
            started = time.perf_counter()
            deadline = Deadline(seconds)  # as sever auto: the budget counts from before the plan
            plan = make_plan(fp, target, seconds, run_name, seed, policy=policy)
            result = run_auto(plan, work / budget / label.replace(" ", "-"), deadline)
            wall = time.perf_counter() - started
            score = held_out_score(result.saved, parts["held_out"], work / budget, label.replace(" ", "-"), classes,
                                   "cpu")
            row["scores"][label] = {"metric": score.mean_dice, "class_dice": list(score.class_dice), "wall_s": wall,
                                    "not_learned": sum("NOT learned" in line for line in result.learning)}
            print(f"{name:>22} {budget:>4} {label:>11}: held-out {score.mean_dice:.4f} ("
                  + " ".join(f"{d:.3f}" for d in score.class_dice) + f"), {wall:.0f} s, "
                  f"{row['scores'][label]['not_learned']} class(es) not learned; {row['plans'][label]}", flush=True)
            if result.final is not None:  # the same study's folds, as an ensemble with its tuned settings
                folds = [entry.run for entry in StudyPaths(result.saved).entries()]
                ensemble = held_out_score(folds, parts["held_out"], work / budget, "its-folds", classes, "cpu",
                                          StudyPaths(result.saved).postprocess)
                row["scores"]["its folds"] = {"metric": ensemble.mean_dice, "class_dice": list(ensemble.class_dice)}
                print(f"{name:>22} {budget:>4} {'its folds':>11}: held-out {ensemble.mean_dice:.4f} ("
                      + " ".join(f"{d:.3f}" for d in ensemble.class_dice) + ")", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_options(parser, "base")
    parser.add_argument("--budgets", default="2m,7m,20m")
    parser.add_argument("--held-out", type=float, default=0.25, help="share of each set held out from everything")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of both plans")
    parser.add_argument("--compare", choices=sorted(PLANNER_SETS), default="learn",
                        help="learn: learn-first against epochs-only; final: a final model against the fold ensemble")
    parser.add_argument("--plans-only", action="store_true", help="plan both ways and print them; train nothing")
    parser.add_argument("--only", default=None,
                        help="train only these cells where the plans differ, e.g. demo/base@7m,neu-seg/smaller@2m")
    parser.add_argument("--out", type=Path, default=Path("plan_to_learn.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="plan-to-learn-") as tmp:
        for name, variant, data, folder in variant_sets(args, Path(tmp)):
            rows += compare(f"{name}/{variant}", data, folder / f"{variant}-runs", args.budgets.split(","),
                            args.held_out, args.seed, args.plans_only,
                            None if args.only is None else set(args.only.split(",")), PLANNER_SETS[args.compare])
            args.out.write_text(json.dumps(rows, indent=1))  # what is done so far
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
