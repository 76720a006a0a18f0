"""``sever train`` (runs, studies, torchrun) and ``sever demo-data``."""

from __future__ import annotations


import click

from sever.cli.common import launch_distributed


@click.command()
@click.option("-c", "--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="Experiment YAML, or the name of a built-in one (e.g. demo); repeat to train several "
                   "one after another.")
@click.option("-r", "--resume", type=click.Path(), default=None,
              help="Checkpoint file or run folder to continue (its newest valid checkpoint).")
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted path, e.g. --set trainer.epochs=5 (repeatable).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this machine (DistributedDataParallel, one per GPU); "
                   "the same as launching with torchrun --standalone --nproc_per_node N.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Train a K-fold study of the config: fold0..fold{K-1} runs in one study folder.")
@click.option("--fold", type=click.IntRange(min=0), default=None,
              help="With --folds or -r STUDY: train only this fold (0..K-1).")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Study folds trained at once, each in its own process on its own GPU(s).")
@click.option("--assign-new-images", is_flag=True,
              help="With -r STUDY: give each image added to the data folder since the study's split a fold "
                   "(the smallest fold first) and save it in splits.json; without it such images are refused.")
@click.pass_context
def train(ctx: click.Context, configs: tuple[str, ...], resume: str | None, overrides: tuple[str, ...],
          nproc: int, folds: int | None, fold: int | None, parallel: int, assign_new_images: bool) -> None:
    """Train models from experiment files, or resume a run or a study."""
    if bool(configs) == bool(resume):
        raise click.UsageError("give either -c CONFIG (one or more) or -r CHECKPOINT_OR_RUN_DIR")
    from sever.utils.config import resolve_experiment
    from sever.study.folder import is_study

    configs = tuple(str(resolve_experiment(config)) for config in configs)
    if folds is not None or (resume and is_study(resume)):
        _train_study(ctx, configs, resume, overrides, nproc, folds, fold, parallel, assign_new_images)
        return
    if assign_new_images:
        raise click.UsageError("--assign-new-images is for -r STUDY_DIR: a study's saved split")
    if fold is not None or parallel > 1:
        raise click.UsageError("--fold and --parallel are for studies: give --folds K with -c, or -r STUDY_DIR")
    if nproc > 1:
        ctx.exit(launch_distributed(ctx, nproc))
    from sever.api import training as api
    from sever.utils.distributed import from_environment

    runs = [api.resume(resume, overrides)] if resume else api.train_files(configs, overrides)
    if from_environment().is_main:
        for run in runs:
            click.echo(f"run saved in {run.root}")
            _echo_learning(run.root, "validation split")
        click.echo(f"next: {_next_command(runs[-1])}")


def _echo_learning(root, where: str, study: bool = False) -> None:
    """Print whether each class was learned (after a run's self-tuning or a study's out-of-fold tuning);
    nothing for an untuned run."""
    from sever.exceptions import CheckpointError
    from sever.inference.learning import learning_lines, run_learning, study_learning

    try:
        verdicts = study_learning(root) if study else run_learning(root)
    except CheckpointError:  # a run that wrote no checkpoint has nothing to judge
        return
    for line in learning_lines(verdicts, where if study else f"{where} of {root}"):
        click.echo(line)


def _next_command(run) -> str:
    """The command that uses a finished run: predict with it (a classifier gates a segmentation run)."""
    if run.config["task"] == "classification":
        return f"sever predict -m SEGMENTATION_RUN --classifier {run.root} -i IMAGE_DIR -o submission.csv"
    return f"sever predict -m {run.root} -i IMAGE_DIR -o submission.csv"


def _train_study(ctx: click.Context, configs: tuple[str, ...], resume: str | None, overrides: tuple[str, ...],
                 nproc: int, folds: int | None, fold: int | None, parallel: int, assign_new_images: bool) -> None:
    """``sever train --folds K -c X`` or ``-r STUDY``: train a study's folds."""
    from sever.study import train as study
    from sever.study.folder import StudyPaths
    from sever.utils.config import load_config
    from sever.utils.distributed import from_environment

    if resume and folds is not None:
        raise click.UsageError("-r STUDY_DIR trains the study's own folds; drop --folds")
    if len(configs) > 1:
        raise click.UsageError("--folds trains one -c CONFIG")
    options = dict(only=fold, overrides=overrides, parallel=parallel, nproc=nproc, debug=ctx.obj["debug"])
    if configs:
        if assign_new_images:
            raise click.UsageError("--assign-new-images is for -r STUDY_DIR: a new study splits all its images")
        paths = study.train_study(load_config(configs[0]), folds, **options)
    else:
        paths = study.resume_study(resume, **options, assign_new_images=assign_new_images)
    if from_environment().is_main:
        whole = StudyPaths(paths.root)
        for number in range(whole.rounds + 1):
            at = whole.at_round(number)
            if whole.rounds:
                score = at.round_record().get("score")
                click.echo(f"round {number}: out-of-fold score "
                           f"{'not yet tuned' if score is None else format(score, '.4f')}")
            for entry in at.entries():
                click.echo(f"fold {entry.fold}: {entry.status:<8} {entry.run}")
        if whole.rounds:
            click.echo(f"sever predict -m {paths.root} uses round {whole.chosen_round()} (the finished round with the "
                       f"best out-of-fold score)")
        click.echo(f"study saved in {paths.root}")
        _echo_learning(paths.root, "out-of-fold images", study=True)

@click.command("demo-data")
@click.option("-o", "--out", "out_dir", default="data/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the synthetic dataset to.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same data.")
@click.option("--overwrite", is_flag=True, help="Regenerate even if a complete demo dataset is there.")
@click.option("--mixed-sizes", is_flag=True,
              help="Give every image its own size, each side between a third of 256x1600 and all of it.")
def demo_data(out_dir: str, seed: int, overwrite: bool, mixed_sizes: bool) -> None:
    """Write the synthetic demo dataset (Kaggle competition layout)."""
    from sever.data_loader.demo import make_demo_data

    path = make_demo_data(out_dir, seed=seed, overwrite=overwrite, mixed_sizes=mixed_sizes)
    click.echo(f"demo data in {path}")
