"""Does ``sever auto --time T`` end by T, on an idle machine and beside a CPU hog?

``sever auto`` runs twice on the same data with the same ``--time``, each as its own process
(``sever.cli.app:cli`` in a new Python, so the wall time includes start-up):

1. on the machine as it is (quiet, for a meaningful figure);
2. with a CPU hog beside it: one busy-looping Python process per CPU core (``--hog-processes``),
   started with auto, so the plan's step timing sees the hog too, as on a loaded machine;
   ``--hog-after S`` starts it S seconds later instead, so the machine becomes slower after the
   plan measured it (the issue's case). The hog is always stopped (``finally``).

It prints, for each, the wall seconds, the ratio wall / ``--time`` (the promise: at most 1.05)
and the lines of auto's log that say where the budget cut something (validation on a subset,
an epoch left out, tuning on a subset, a report left out). Run from the repository root::

    PYTHONPATH=. python benchmarks/budget_under_load.py --time 1m --demo-images 48   # a smoke run (~3 min)
    PYTHONPATH=. python benchmarks/budget_under_load.py --time 8m --hog-after 60  # the figure (~17 min)
    PYTHONPATH=. python benchmarks/budget_under_load.py --data DIR --time 8m      # your own dataset

Without ``--data`` the demo dataset (``sever demo-data``, 256 images of 256x1600; ``--mixed-sizes``
for images of mixed sizes) is generated into a temporary folder first (not timed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sever.utils.time_budget import parse_budget

REPO = Path(__file__).resolve().parents[1]
BUDGET_LINES = re.compile(r"time budget|validation on \d+ of|tuning on \d+ of|no run report|fold \d+ of round")


def busy_loop() -> None:
    """Spin on one core until killed."""
    while True:
        pass


def start_hog(processes: int) -> list[multiprocessing.Process]:
    hogs = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(processes)]
    for hog in hogs:
        hog.start()
    return hogs


def stop_hog(hogs: list[multiprocessing.Process]) -> None:
    for hog in hogs:
        hog.terminate()
    for hog in hogs:
        hog.join(timeout=10)
        if hog.is_alive():
            hog.kill()
            hog.join()


def run_auto(data: Path, budget: str, out: Path, extra: list[str], hog: int, hog_after: float) -> tuple[float, str]:
    """Wall seconds of one ``sever auto`` and its output; with ``hog`` > 0 busy processes beside it."""
    command = [sys.executable, "-c", "from sever.cli.app import cli; cli()", "auto", str(data), "--time", budget, "-o", str(out), *extra]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    hogs: list[multiprocessing.Process] = []
    started = time.monotonic()
    auto = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if hog:
            if hog_after:
                try:
                    auto.wait(timeout=hog_after)
                except subprocess.TimeoutExpired:
                    pass
            if auto.poll() is None:
                hogs = start_hog(hog)
        output, _ = auto.communicate()
    finally:
        stop_hog(hogs)
        if auto.poll() is None:
            auto.kill()
            auto.wait()
    wall = time.monotonic() - started
    if auto.returncode != 0:
        raise SystemExit(f"sever auto failed ({auto.returncode}):\n{output[-4000:]}")
    return wall, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: generated demo data)")
    parser.add_argument("--time", default="2m", help="sever auto --time (default 2m)")
    parser.add_argument("--hog-processes", type=int, default=os.cpu_count() or 1,
                        help="busy processes beside the loaded run (default: one per core)")
    parser.add_argument("--hog-after", type=float, default=0.0,
                        help="start the hog this many seconds after auto (default 0: from the start)")
    parser.add_argument("--mixed-sizes", action="store_true", help="generated demo images of mixed sizes")
    parser.add_argument("--demo-images", type=int, default=256, help="labelled images of the generated demo data")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--skip-idle", action="store_true", help="only the loaded run")
    parser.add_argument("--logs", type=Path, default=None, help="folder to keep each run's whole output in")
    args = parser.parse_args()
    budget = parse_budget(args.time)
    with tempfile.TemporaryDirectory(prefix="sever-budget-") as temporary:
        root = Path(temporary)
        data = args.data
        if data is None:
            from sever.data_loader.demo import make_demo_data

            data = make_demo_data(root / "demo", n_train=args.demo_images, n_test=8, seed=0,
                                  mixed_sizes=args.mixed_sizes)
        runs = [("loaded", args.hog_processes)] if args.skip_idle else [("idle", 0), ("loaded", args.hog_processes)]
        results = []
        for label, hog in runs:
            wall, output = run_auto(data, args.time, root / label, ["--device", args.device], hog, args.hog_after)
            results.append((label, hog, wall))
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"auto_{label}.log").write_text(output)
            print(f"--- {label}: {wall:.0f} s; where the budget acted:")
            for line in output.splitlines():
                if BUDGET_LINES.search(line):
                    print(f"    {line.strip()[:160]}")
        print(f"\nsever auto --time {args.time} ({budget:.0f} s) on {data}")
        print(f"{'run':<8} {'hog':>4} {'wall s':>8} {'wall / --time':>14}")
        for label, hog, wall in results:
            hogged = f"{hog}p" + (f"@{args.hog_after:.0f}s" if hog and args.hog_after else "") if hog else "-"
            print(f"{label:<8} {hogged:>4} {wall:>8.0f} {wall / budget:>14.3f}")


if __name__ == "__main__":
    main()
