"""``sever report``, ``upload`` and ``export``: what leaves a finished run."""

from __future__ import annotations


import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--max-images", default=200, show_default=True, type=click.IntRange(min=1),
              help="Validation images of a run predicted on the CPU for the scores, precision-recall and "
                   "threshold curves, mosaics and gallery (spread evenly over the split).")
@click.option("--examples", default=4, show_default=True, type=click.IntRange(min=1),
              help="Best and worst validation images shown in the mosaics.")
@click.option("--postprocess", type=click.Path(dir_okay=False), default=None,
              help="Post-processing YAML to score with [default: RUN/postprocess.yml when there, else the defaults].")
@click.option("-o", "--out", "out_dir", default="comparison", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the comparison page when several runs are given.")
def report(run_dirs: tuple[str, ...], max_images: int, examples: int, postprocess: str | None, out_dir: str) -> None:
    """Write RUN/report/ (curves, validation scores, precision-recall, examples, a gallery of every scored image),
    STUDY/report/ (folds side by side, out-of-fold scores, tuned post-processing, the time budget), or, given
    several runs, a comparison page in --out; each an offline index.html."""
    from sever.report import write_report
    from sever.report.compare import is_study, write_comparison, write_study_report

    if len(run_dirs) > 1:
        written = write_comparison(run_dirs, out_dir)
    elif is_study(run_dirs[0]):
        written = write_study_report(run_dirs[0])
    else:
        written = write_report(run_dirs[0], max_images=max_images, examples=examples, postprocess=postprocess,
                               cap_option="--max-images")
    for line in written.missing:
        click.echo(f"missing: {line}")
    click.echo(f"wrote {written.index}")


@click.command()
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

@click.command()
@click.option("-m", "--model", "checkpoint", required=True, type=click.Path(),
              help="Checkpoint file, or run folder (its model_best.pth, else its newest checkpoint).")
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx", "torchscript", "smp"]),
              help="Export format: an ONNX file, a TorchScript file, or an smp folder (smp.from_pretrained, "
                   "with albumentations' preprocessing and a model card).")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="File to write (--format smp: the folder).")
@click.option("--height", default=256, show_default=True, type=click.IntRange(min=1),
              help="Height of the example input, pixels.")
@click.option("--width", default=1600, show_default=True, type=click.IntRange(min=1),
              help="Width of the example input, pixels.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=1), help="ONNX opset version.")
@click.option("--dynamic", is_flag=True,
              help="ONNX: accept any height and width, not only the example's (the batch size is always free; "
                   "TorchScript and smp take any size).")
@click.option("--atol", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest difference from PyTorch's probabilities (sigmoid of the logits) accepted.")
def export(checkpoint: str, fmt: str, out: str, height: int, width: int, opset: int, dynamic: bool,
           atol: float) -> None:
    """Export a trained model to ONNX, TorchScript or an smp folder, with its metadata, checked against PyTorch."""
    from sever.export import export_model

    result = export_model(checkpoint, fmt, out, height=height, width=width, opset=opset, dynamic=dynamic, atol=atol)
    shapes = ", ".join("x".join(map(str, shape)) for shape in result.checked_shapes)
    click.echo(f"exported the {result.weights} weights of {result.checkpoint} to {result.path} ({fmt})")
    click.echo(f"checked against PyTorch on random inputs {shapes}: probabilities differ by up to "
               f"{result.max_prob_diff:.2e} (--atol {atol:g}), logits by up to {result.max_abs_diff:.2e}")
