"""The ``sever`` command line.

User errors (bad config, data or checkpoints) print one clear message and exit
with status 1; ``--debug`` shows the traceback. Heavy imports happen inside the
commands so ``sever --help`` answers at once.
"""

from __future__ import annotations

import logging

import click

from sever import __version__
from sever.exceptions import SeverError, TrainingInterrupted

logger = logging.getLogger("sever")

EXIT_USER_ERROR = 1


class SeverGroup(click.Group):
    """A click group that turns :class:`SeverError` into a message and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrainingInterrupted as exc:
            click.echo(str(exc), err=True)
            ctx.exit(128 + exc.signal_number)
        except SeverError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)


@click.group(cls=SeverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to the console.")
@click.version_option(__version__, prog_name="sever")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """sever: steel-surface defect segmentation (Severstal's recipe as a framework)."""
    from sever.utils.logger import setup_logging

    setup_logging(verbose or debug)
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("-c", "--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="Experiment YAML; repeat to train several one after another.")
@click.option("-r", "--resume", type=click.Path(), default=None,
              help="Checkpoint file or run folder to continue (its newest valid checkpoint).")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted path, e.g. --set trainer.epochs=5 (repeatable).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this machine (DistributedDataParallel, one per GPU); "
                   "the same as launching with torchrun --standalone --nproc_per_node N.")
@click.pass_context
def train(ctx: click.Context, configs: tuple[str, ...], resume: str | None, overrides: tuple[str, ...],
          nproc: int) -> None:
    """Train models from experiment files, or resume a run."""
    if bool(configs) == bool(resume):
        raise click.UsageError("give either -c CONFIG (one or more) or -r CHECKPOINT_OR_RUN_DIR")
    if nproc > 1:
        ctx.exit(_launch_distributed(nproc, configs, resume, overrides, ctx.obj["debug"]))
    from sever import main
    from sever.utils.distributed import from_environment

    runs = [main.resume(resume, overrides)] if resume else main.train_from_files(configs, overrides)
    if from_environment().is_main:
        for run in runs:
            click.echo(f"run saved in {run.root}")


def _launch_distributed(nproc: int, configs, resume, overrides, debug: bool) -> int:
    """Re-run this ``sever train`` under torchrun with ``nproc`` processes; returns its exit code."""
    import subprocess
    import sys

    args = ["--debug"] if debug else []
    args += ["train", *(f"--config={c}" for c in configs), *(f"--set={o}" for o in overrides)]
    if resume:
        args.append(f"--resume={resume}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "sever", *args]
    logger.info("launching %d processes: %s", nproc, " ".join(command))
    return subprocess.run(command, check=False).returncode


@cli.command("demo-data")
@click.option("-o", "--out", "out_dir", default="data/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the synthetic dataset to.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same data.")
@click.option("--overwrite", is_flag=True, help="Regenerate even if a complete demo dataset is there.")
def demo_data(out_dir: str, seed: int, overwrite: bool) -> None:
    """Write the synthetic demo dataset (Kaggle competition layout)."""
    from sever.data_loader.demo import make_demo_data

    path = make_demo_data(out_dir, seed=seed, overwrite=overwrite)
    click.echo(f"demo data in {path}")


@cli.command()
@click.option("-r", "--run", "run_dir", required=True, type=click.Path(),
              help="Run folder, e.g. saved/sever-unet-b5/1026_140000.")
@click.option("-e", "--epoch", "epochs", multiple=True, type=int,
              help="Send checkpoint-epoch{N}.pth of this epoch (repeatable).")
@click.option("--best", is_flag=True, help="Send model_best.pth.")
@click.option("--weights-only", is_flag=True,
              help="Send only what inference needs (weights, EMA weights, config): no optimiser state.")
@click.option("--dataset-id", default=None, metavar="USER/SLUG",
              help="Kaggle dataset to create or add a version to [default: your user name from the Kaggle "
                   "credentials / sever-<name>-<run stamp>].")
@click.option("--title", default=None, help="Dataset title, 6-50 characters, used on creation "
                                            "[default: sever-<name> <run stamp>].")
@click.option("--license", "license_name", default="CC0-1.0", show_default=True, help="Kaggle licence name.")
@click.option("-m", "--message", default=None, help="Notes for a new version [default: the files sent].")
@click.option("--staging", type=click.Path(file_okay=False), default=None,
              help="Empty folder to stage the files in, kept afterwards [default: a temporary folder].")
@click.option("--dry-run", is_flag=True, help="Stage and show what would be sent, then stop.")
def upload(run_dir: str, epochs: tuple[int, ...], best: bool, weights_only: bool, dataset_id: str | None,
           title: str | None, license_name: str, message: str | None, staging: str | None, dry_run: bool) -> None:
    """Publish chosen checkpoints of a run as a Kaggle dataset (for offline Kaggle kernels)."""
    import shlex

    from sever import upload as kaggle_upload

    plan = kaggle_upload.plan_upload(run_dir, epochs, best, dataset_id=dataset_id, title=title,
                                     license_name=license_name, weights_only=weights_only, staging=staging,
                                     sending=not dry_run)
    message = message or kaggle_upload.default_message(plan)
    action = None if dry_run else kaggle_upload.remote_action(plan.dataset_id)
    with kaggle_upload.staging_folder(plan, keep=dry_run) as folder:
        staged = kaggle_upload.stage(plan, folder)
        click.echo(kaggle_upload.describe(staged))
        if dry_run:
            commands = kaggle_upload.kaggle_commands(staged, message)
            click.echo(f"dry run: nothing sent; the staged files stay in {folder}. Sending runs\n"
                       f"  kaggle {shlex.join(commands['create'])}\n"
                       f"or, when {plan.dataset_id} exists,\n  kaggle {shlex.join(commands['version'])}")
            return
        published = kaggle_upload.publish(staged, action, message)
    click.echo(published.output)
    click.echo(f"{'created' if published.action == 'create' else 'new version of'} "
               f"https://www.kaggle.com/datasets/{plan.dataset_id}")


@cli.command("check-data")
@click.argument("data_dir", type=click.Path())
@click.option("--csv", default="train.csv", show_default=True, help="Masks CSV (either Kaggle format), relative to DATA_DIR.")
@click.option("--images", default="train_images", show_default=True, help="Image folder, relative to DATA_DIR.")
@click.option("--classes", default=4, show_default=True, type=click.IntRange(min=1), help="Number of defect classes.")
@click.option("--full", is_flag=True, help="Also decode every image (slower; finds corrupt data inside files).")
@click.pass_context
def check_data(ctx: click.Context, data_dir: str, csv: str, images: str, classes: int, full: bool) -> None:
    """Check every image and mask of a dataset without training; exit 1 if anything is wrong."""
    from sever.data_loader.checks import check_dataset

    report = check_dataset(data_dir, csv=csv, images=images, classes=classes, full=full)
    click.echo(f"{data_dir}: {images}/ and {csv} ({'full' if full else 'quick'} check)")
    for line in report.summary():
        click.echo(line)
    if report.problems:
        click.echo(f"Error: {len(report.problems)} problem(s) found in {data_dir}", err=True)
        ctx.exit(EXIT_USER_ERROR)
