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


@cli.command()
@click.option("--from", "source", required=True, type=click.Choice(["kaggle", "mask-folder"]),
              help="Format to read.")
@click.option("--to", "target", required=True, type=click.Choice(["kaggle", "mask-folder"]),
              help="Format to write.")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Image folder (both formats).")
@click.option("--masks", required=True, type=click.Path(file_okay=False),
              help="Mask folder: read with --from mask-folder, written with --to mask-folder.")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="Kaggle CSV: read with --from kaggle (either format), written with --to kaggle.")
@click.option("--classes", required=True, type=click.IntRange(min=1), help="Number of defect classes.")
@click.option("--class-names", default=None, metavar="A,B,...",
              help="Comma-separated class names: the per-class mask folder names (default 1..classes).")
@click.option("--layout", default="labels", show_default=True, type=click.Choice(["labels", "per-class"]),
              help="Mask folder written: one label map per image, or one binary mask per class.")
@click.option("--csv-format", default="train", show_default=True,
              type=click.Choice(["train", "original", "submission"]),
              help="CSV written: ImageId,ClassId,EncodedPixels (train), ImageId_ClassId (original), ...")
def convert(source: str, target: str, images: str, masks: str, csv_path: str, classes: int,
            class_names: str | None, layout: str, csv_format: str) -> None:
    """Convert masks between a Kaggle CSV and a mask folder (images/ + masks/)."""
    from sever.data_loader.convert import csv_to_mask_folder, mask_folder_to_csv

    if source == target:
        raise click.UsageError("--from and --to are the same format: nothing to convert")
    names = [name.strip() for name in class_names.split(",")] if class_names else None
    if names is not None and len(names) != classes:
        raise click.BadParameter(f"{len(names)} names for {classes} classes", param_hint="--class-names")
    if source == "mask-folder":
        annotations = mask_folder_to_csv(images, masks, csv_path, classes, names, csv_format)
        click.echo(f"wrote {int(annotations.has_defect().sum())} masks of {len(annotations)} images to {csv_path}")
    else:
        annotations = csv_to_mask_folder(images, csv_path, masks, classes, names, layout)
        click.echo(f"wrote {layout} masks of {len(annotations)} images to {masks}")
