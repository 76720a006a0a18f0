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
@click.option("-m", "--model", "checkpoint", required=True, type=click.Path(),
              help="Checkpoint file, or run folder (its model_best.pth, else its newest checkpoint).")
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx", "torchscript"]), help="Export format.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--height", default=256, show_default=True, type=click.IntRange(min=1),
              help="Height of the example input, pixels.")
@click.option("--width", default=1600, show_default=True, type=click.IntRange(min=1),
              help="Width of the example input, pixels.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=1), help="ONNX opset version.")
@click.option("--dynamic", is_flag=True,
              help="ONNX: accept any height and width, not only the example's (the batch size is always free).")
def export(checkpoint: str, fmt: str, out: str, height: int, width: int, opset: int, dynamic: bool) -> None:
    """Export a trained model to ONNX or TorchScript and check it against PyTorch."""
    from sever.export import export_model

    result = export_model(checkpoint, fmt, out, height=height, width=width, opset=opset, dynamic=dynamic)
    shapes = ", ".join("x".join(map(str, shape)) for shape in result.checked_shapes)
    click.echo(f"exported the {result.weights} weights of {result.checkpoint} to {result.path} ({fmt})")
    click.echo(f"checked against PyTorch on random inputs {shapes}: max abs difference {result.max_abs_diff:.2e}")
