"""``sever plan`` and ``sever auto``: an experiment planned from a dataset, and a study trained from it."""

from __future__ import annotations

from pathlib import Path

import click

from sever.cli.common import LabelFormat


def _plan_options(command=None, *, data_required: bool = True):
    """The options ``sever plan`` and ``sever auto`` share: where the data is, the device, the budget."""
    if command is None:
        return lambda command: _plan_options(command, data_required=data_required)
    options = [
        click.argument("data_dir", type=click.Path(), required=data_required),
        click.option("--format", "fmt", type=LabelFormat(), default=None,
                     help="Label format: a registered data source of masks [default: kaggle when the CSV is there, "
                          "else mask_folder]."),
        click.option("--images", default="train_images", show_default=True, help="Image folder, relative to DATA_DIR."),
        click.option("--csv", default="train.csv", show_default=True, help="Masks CSV (kaggle), relative to DATA_DIR."),
        click.option("--masks", default="train_masks", show_default=True,
                     help="Mask folder (mask_folder), relative to DATA_DIR."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="The device the plan is measured on and trains on."),
        click.option("--name", default=None, help="Experiment name [default: the file name / DATA_DIR's name]."),
        click.option("--seed", default=42, show_default=True, type=int,
                     help="Random seed of the planned experiment (its split, weights and batches)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _layout(fmt: str | None, images: str, csv: str, masks: str):
    from sever.planning.fingerprint import Layout

    return Layout(fmt or "kaggle", images, csv, masks)


@click.command()
@_plan_options
@click.option("--time", "time_budget", default="1h", show_default=True,
              help="Time the whole study may take (e.g. 2h30m): folds, epochs and the model are sized to it.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Experiment file to write (fingerprint.json goes beside it), e.g. experiments/mine.yml.")
def plan(data_dir: str, fmt: str | None, images: str, csv: str, masks: str, device: str, name: str | None,
         seed: int, time_budget: str, output: str) -> None:
    """Read a dataset's fingerprint and write an experiment planned from it, each value with its reason."""
    from sever.study.auto import plan_dataset
    from sever.utils.paths import check_output_path

    check_output_path(output, "-o")  # before the fingerprint and the step timing

    planned = plan_dataset(data_dir, time_budget, name or Path(output).stem, _layout(fmt, images, csv, masks), fmt,
                           device, seed=seed)
    for line in planned.fingerprint.table():
        click.echo(line)
    for note in planned.notes:
        click.echo(f"note: {note}")
    click.echo(planned.learning.note())
    click.echo(f"wrote {planned.write(output)} and {Path(output).parent / 'fingerprint.json'}")
    folds = f" --folds {planned.folds}" if planned.folds > 1 else ""
    click.echo(f"next: sever train -c {output}{folds}   (or sever auto {data_dir} --time {time_budget})")


@click.command()
@_plan_options(data_required=False)
@click.option("--time", "time_budget", default=None, help="Time the whole run may take, e.g. 2h (required with DATA_DIR).")
@click.option("--unlabelled", type=click.Path(file_okay=False), default=None,
              help="Folder of unlabelled images for a pseudo-label round.")
@click.option("-o", "--out", "out_dir", default="saved/auto", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the experiment file, the fingerprint and the study.")
@click.option("--resume", "resume_dir", default=None, type=click.Path(file_okay=False),
              help="Continue the sever auto whose -o folder this is (after a stop: SIGTERM, Ctrl-C), instead of "
                   "DATA_DIR: its study is resumed as sever train -r STUDY does, then tuned and reported.")
def auto(data_dir: str | None, fmt: str | None, images: str, csv: str, masks: str, device: str, name: str | None,
         seed: int, time_budget: str | None, unlabelled: str | None, out_dir: str, resume_dir: str | None) -> None:
    """Plan, train a K-fold study within --time, tune it out-of-fold; ends with the command that predicts.

    Stopped (SIGTERM, Ctrl-C), it exits with 128 + the signal and prints the one command that continues:
    sever auto --resume OUT_DIR.
    """
    from sever.utils.time_budget import Deadline, parse_budget

    # --time counts from here: imports and the plan included
    deadline = Deadline(parse_budget(time_budget)) if time_budget is not None and resume_dir is None else None
    from sever.api.training import plan as plan_experiment, run_plan
    from sever.study.auto import resume_auto
    from sever.utils.paths import check_output_path

    if resume_dir is not None:
        if data_dir is not None or time_budget is not None:
            raise click.UsageError("--resume OUT_DIR continues the saved plan: give no DATA_DIR nor --time")
        _print_result(resume_auto(resume_dir))
        return
    if data_dir is None or time_budget is None:
        raise click.UsageError("give DATA_DIR and --time (or --resume OUT_DIR to continue a stopped sever auto)")
    check_output_path(out_dir, "-o", folder=True)

    planned = plan_experiment(data_dir, time_budget, name, fmt, images, csv, masks, device, unlabelled, seed)
    for line in planned.fingerprint.table():
        click.echo(line)
    for note in planned.notes:
        click.echo(f"note: {note}")
    click.echo(planned.learning.note())
    _print_result(run_plan(planned, out_dir, deadline).result)


def _print_result(result) -> None:
    """What ``sever auto`` made, ending with the command that predicts (and each class it did not learn)."""
    click.echo(f"experiment: {result.experiment}")
    click.echo(result.tuning)
    for report in result.reports:
        click.echo(f"report: {report}")
    click.echo(f"{result.kind} saved in {result.saved}")
    if result.final is not None:
        click.echo(f"final model (predicts for the study): {result.final}")
    for line in result.learning:  # just above the predict command: a class never learned cannot go unseen
        click.echo(line)
    click.echo(f"next: {result.predict_command}")
