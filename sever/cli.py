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
def train(configs: tuple[str, ...], resume: str | None, overrides: tuple[str, ...]) -> None:
    """Train models from experiment files, or resume a run."""
    from sever import main

    if bool(configs) == bool(resume):
        raise click.UsageError("give either -c CONFIG (one or more) or -r CHECKPOINT_OR_RUN_DIR")
    runs = [main.resume(resume, overrides)] if resume else main.train_from_files(configs, overrides)
    for run in runs:
        click.echo(f"run saved in {run.root}")


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
