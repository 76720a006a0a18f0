"""Mutation testing of sever's core modules with mutmut 3 (slow: not part of CI).

Each module is mutated on its own, in a scratch copy of the checkout
(``build/mutation/<module>/``), and only the test files that exercise it run
against each mutant. A mutant is *killed* when one of those tests fails and
*survives* when all pass: a survivor is either a behaviour no test checks or an
equivalent mutant (a change that cannot alter behaviour). Usage::

    pip install -e '.[dev]'
    python tools/mutation.py                                   # every module in MODULES
    python tools/mutation.py sever/model/metric.py             # chosen modules
    python tools/mutation.py sever/new.py --tests tests/package/test_new.py --jobs 4
    python tools/mutation.py sever/model/metric.py --survivors  # after new tests: only the survivors again

It prints ``killed/total`` per module and, for each survivor, mutmut's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The training step's tests in tests/trainer/test_trainer.py, whose other tests train real runs (minutes per mutant).
TRAIN_STEP = [f"tests/trainer/test_trainer.py::{name}" for name in (
    "test_accumulated_steps_update_once_with_the_mean_gradient",
    "test_a_non_finite_loss_stops_training_at_the_next_read_naming_its_first_batch",
    "test_one_validation_pass_logs_the_tasks_loss_or_metrics_and_keeps_the_visuals_asked_for")]

# The core modules and the test files that exercise each one. Edit freely: a module that
# moves only needs its line changed.
MODULES: dict[str, list[str]] = {
    "sever/data_loader/rle.py": ["tests/data_loader/test_rle.py"],
    "sever/model/metric.py": ["tests/model/test_metric.py"],
    "sever/model/postprocess.py": ["tests/model/test_postprocess.py", "tests/model/test_metric.py"],
    "sever/data_loader/sampling.py": ["tests/data_loader/test_sampling.py"],
    "sever/utils/checkpoint.py": ["tests/utils/test_checkpoint.py"],
    # The predictor's and the trainer's fast files (tiny models in memory): the files that train
    # or load real runs (tests/cli/test_prediction.py, tests/trainer/test_trainer.py, ...) take minutes per mutant.
    "sever/inference/predictor.py": ["tests/inference/test_predictor.py", "tests/inference/test_compose.py"],
    "sever/inference/compose.py": ["tests/inference/test_compose.py"],
    "sever/trainer/trainer.py": ["tests/trainer/test_base.py", *TRAIN_STEP, "tests/trainer/test_valid_tiling.py"],
    "sever/trainer/base.py": ["tests/trainer/test_base.py", *TRAIN_STEP],
    "sever/trainer/budget.py": ["tests/trainer/test_budget.py", "tests/trainer/test_base.py"],
}

# What the tests read besides sever/ and tests/ (copied into the scratch checkout).
SUPPORT_FILES = ["experiments", "README.rst", "DEVELOPERS.md", "CHANGELOG.rst", "setup.py", "pyproject.toml", "LICENSE",
                 "conftest.py"]

# The scratch checkout's top conftest.py. mutmut forks one process per mutant, and tqdm's class-wide
# write lock is a multiprocessing lock, shared by every fork: a mutant killed at its time limit while
# holding it left each later mutant that opens a progress bar waiting forever (measured: every
# ``predict_files`` mutant hung at 0% CPU). A lock of each process's own ends that.
FORK_SAFE_CONFTEST = '''"""Written by tools/mutation.py for mutmut's forked mutant processes (not part of sever)."""
import threading

from tqdm import tqdm


def pytest_configure(config):
    tqdm.set_lock(threading.RLock())
'''

IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")


def scratch_root(module: str, workdir: Path) -> Path:
    return workdir / module.replace("/", "_").removesuffix(".py")


def scratch_checkout(module: str, tests: list[str], workdir: Path) -> Path:
    """A fresh copy of the checkout where mutmut mutates only ``module`` and runs only ``tests``."""
    root = scratch_root(module, workdir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ["sever", "tests", *SUPPORT_FILES]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=IGNORE)
        elif source.is_file():
            shutil.copy(source, root / name)
    (root / "conftest.py").write_text(FORK_SAFE_CONFTEST)
    write_selection(root, module, tests)
    return root


def refresh_tests(root: Path, module: str, tests: list[str]) -> None:
    """Bring the tests of an earlier run's scratch copy up to date (the mutated module must be unchanged)."""
    if (REPO / module).read_bytes() != (root / module).read_bytes():
        raise SystemExit(f"{module} changed since the last run: run it again without --survivors")
    for target in (root / "tests", root / "mutants" / "tests"):
        shutil.copytree(REPO / "tests", target, ignore=IGNORE, dirs_exist_ok=True)
    write_selection(root, module, tests)


def write_selection(root: Path, module: str, tests: list[str]) -> None:
    # mutmut copies sever/ whole (the tests import all of it) and mutates only ``module``.
    section = ["", "[mutmut]", "source_paths = sever/", f"only_mutate = {module}",
               "also_copy =", *(f"    {p}" for p in SUPPORT_FILES),
               # mutmut's limit is (estimated test time + 1 s) x 15 x 2 CPU seconds, the estimate from one
               # clean run: on a loaded machine a mutant that every test passes ran past it and was
               # reported as a timeout (counted as killed); 50 leaves room and still ends real hangs.
               "timeout_multiplier = 50",
               "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests)]
    # pytest's own settings come from the copied pyproject.toml; setup.cfg holds only mutmut's.
    setup_cfg = "\n".join(section).lstrip("\n") + "\n"
    for folder in (root, root / "mutants"):
        if folder.is_dir():
            (folder / "setup.cfg").write_text(setup_cfg)


def mutant_env() -> dict[str, str]:
    """The environment for mutmut: no PYTHONPATH (the mutated copy must be the ``sever`` imported)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("SEVER_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    # One thread per mutant: mutmut's time limit is CPU seconds, and torch's thread pool spinning in
    # the forked test processes used them up (tests that pass in seconds were reported as timeouts).
    env["OMP_NUM_THREADS"] = "1"
    return env


def results(root: Path, module: str) -> dict[str, str]:
    """``{mutant name: status}`` (killed, survived, no tests, timeout, ...) from mutmut's ``.meta`` file."""
    from mutmut.stats import status_by_exit_code

    merged = root / "mutants" / f"{module}.statuses.json"
    meta = root / "mutants" / f"{module}.meta"
    if merged.is_file() and merged.stat().st_mtime >= meta.stat().st_mtime:
        return json.loads(merged.read_text())
    if not meta.is_file():
        raise SystemExit(f"mutmut wrote no results for {module} (see its output above)")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def mutmut_command() -> list[str]:
    """mutmut's console script: ``python -m mutmut`` would import mutmut twice and fail in its tests."""
    script = Path(sys.executable).with_name("mutmut")
    if not script.is_file():
        raise SystemExit(f"mutmut is not installed beside {sys.executable}: pip install -e '.[dev]'")
    return [str(script)]


def save_results(root: Path, module: str, status: dict[str, str]) -> None:
    """Keep the merged statuses beside mutmut's files, so that ``--survivors`` can run again."""
    (root / "mutants" / f"{module}.statuses.json").write_text(json.dumps(status, indent=1, ensure_ascii=False))


def show(root: Path, name: str, env: dict[str, str]) -> str:
    return subprocess.run([*mutmut_command(), "show", name], cwd=root, env=env,
                          capture_output=True, text=True).stdout


def run_module(module: str, tests: list[str], workdir: Path, jobs: int, diffs: bool,
               survivors_only: bool) -> tuple[int, int]:
    """Mutate ``module``; print its score and survivors; return ``(killed, total)``.

    With ``survivors_only``, reuse the last run's scratch copy and test again only the
    mutants it did not kill (after new tests were written for them).
    """
    env = mutant_env()
    names: list[str] = []
    earlier: dict[str, str] = {}
    root = scratch_root(module, workdir)
    if survivors_only:
        if not (root / "mutants" / f"{module}.meta").is_file():
            raise SystemExit(f"no earlier run of {module} under {workdir}: run it without --survivors first")
        refresh_tests(root, module, tests)
        earlier = results(root, module)
        names = [n for n, s in earlier.items() if s not in ("killed", "timeout")]
    else:
        scratch_checkout(module, tests, workdir)
    print(f"== {module}  (tests: {' '.join(tests)})", flush=True)
    if names or not survivors_only:
        subprocess.run([*mutmut_command(), "run", "--max-children", str(jobs), *names], cwd=root, env=env,
                       check=False)
    # mutmut forgets the other results when the test selection changes: the earlier kills still stand
    # (the module is unchanged and tests were only added), so keep them and take the survivors' new status.
    latest = results(root, module)
    status = {**earlier, **{n: latest[n] for n in names}} if survivors_only else latest
    save_results(root, module, status)
    # A timeout counts as killed (the mutant made the tests hang), as mutmut's own score does.
    killed = sorted(n for n, s in status.items() if s in ("killed", "timeout"))
    survivors = sorted(set(status) - set(killed))
    counts = {s: sum(1 for n in survivors if status[n] == s) for s in sorted({status[n] for n in survivors})}
    print(f"{module}: {len(killed)}/{len(status)} killed ({100 * len(killed) / max(len(status), 1):.1f}%); "
          f"not killed: {counts or 'none'}")
    for name in survivors:
        print(f"  {status[name]}: {name}")
        if diffs:
            print("    " + show(root, name, env).strip().replace("\n", "\n    "))
    return len(killed), len(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths from the repository root (default: MODULES)")
    parser.add_argument("--tests", nargs="+", help="test files for the given modules instead of MODULES' lists")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "mutation",
                        help="where the scratch copies go (default build/mutation)")
    parser.add_argument("--no-diffs", action="store_true", help="list survivors without their diffs")
    parser.add_argument("--survivors", action="store_true",
                        help="test again only the last run's survivors, with the current tests")
    args = parser.parse_args()
    modules = args.modules or list(MODULES)
    scores = {}
    for module in modules:
        tests = args.tests or MODULES.get(module)
        if not tests:
            parser.error(f"{module} is not in MODULES: give its test files with --tests")
        if not (REPO / module).is_file():
            parser.error(f"{module}: no such file under {REPO}")
        scores[module] = run_module(module, tests, args.workdir, args.jobs, not args.no_diffs, args.survivors)
    print("\nmodule  killed/total")
    for module, (killed, total) in scores.items():
        print(f"{module}  {killed}/{total}  ({100 * killed / max(total, 1):.1f}%)")


if __name__ == "__main__":
    main()
