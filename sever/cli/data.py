"""``sever convert`` and ``sever check-data``: datasets before training."""

from __future__ import annotations


import click

from sever.cli.common import EXIT_USER_ERROR, LabelFormat, size_option


@click.command()
@click.option("--from", "source", required=True, type=LabelFormat(),
              help="Format to read: a registered data source of masks (mask-folder is mask_folder).")
@click.option("--to", "target", required=True, type=LabelFormat(writable=True),
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
    """Convert masks between a Kaggle CSV, a mask folder (images/ + masks/) and any other registered format."""
    from sever.data_loader.convert import convert_labels

    if source == target:
        raise click.UsageError("--from and --to are the same format: nothing to convert")
    names = [name.strip() for name in class_names.split(",")] if class_names else None
    if names is not None and len(names) != classes:
        raise click.BadParameter(f"{len(names)} names for {classes} classes", param_hint="--class-names")
    annotations = convert_labels(source, target, images, masks, csv_path, classes, names, layout, csv_format)
    if target == "kaggle":
        click.echo(f"wrote {int(annotations.has_defect().sum())} masks of {len(annotations)} images to {csv_path}")
    else:
        click.echo(f"wrote {layout} masks of {len(annotations)} images to {masks}")

@click.command("check-data")
@click.argument("data_dir", type=click.Path())
@click.option("--csv", default="train.csv", show_default=True, help="Masks CSV (either Kaggle format), relative to DATA_DIR.")
@click.option("--images", default="train_images", show_default=True, help="Image folder, relative to DATA_DIR.")
@click.option("--format", "fmt", default="kaggle", show_default=True, type=LabelFormat(),
              help="Label format: a registered data source of masks.")
@click.option("--masks", default="train_masks", show_default=True,
              help="Mask folder (mask_folder), relative to DATA_DIR.")
@click.option("--classes", default=4, show_default=True, type=click.IntRange(min=1), help="Number of defect classes.")
@click.option("--full", is_flag=True, help="Also decode every image (slower; finds corrupt data inside files).")
@click.option("--crop", default=None, metavar="HxW", callback=size_option,
              help="Training crop: say how many images are smaller than it (training pads them).")
@click.option("--tile", default=None, metavar="HxW", callback=size_option,
              help="Prediction tile: say how many images are larger than it (prediction tiles them).")
@click.pass_context
def check_data(ctx: click.Context, data_dir: str, csv: str, images: str, fmt: str, masks: str, classes: int,
               full: bool, crop: tuple[int, int] | None, tile: tuple[int, int] | None) -> None:
    """Check every image and mask of a dataset without training; exit 1 if anything is wrong."""
    from sever.data_loader.checks import check_dataset

    report = check_dataset(data_dir, csv=csv, images=images, classes=classes, full=full, format=fmt, masks=masks)
    labels = {"kaggle": csv, "mask_folder": f"{masks}/"}.get(fmt, f"the {fmt} labels")
    click.echo(f"{data_dir}: {images}/ and {labels} ({'full' if full else 'quick'} check)")
    for line in report.summary(crop, tile):
        click.echo(line)
    if report.problems:
        click.echo(f"Error: {len(report.problems)} problem(s) found in {data_dir}", err=True)
        ctx.exit(EXIT_USER_ERROR)
