"""``sever label-issues``: the labels a study's out-of-fold maps disagree with, most suspect first."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("label-issues")
@click.argument("study_dir", type=click.Path())
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for label_issues.csv and gallery.html [default: STUDY/label_issues].")
@click.option("--postprocess", type=click.Path(dir_okay=False), default=None,
              help="Post-processing YAML that makes a prediction confident [default: the study's tuned "
                   "postprocess.yml when there, else the defaults].")
@click.option("--outline-iou", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="A labelled mask overlapping its confident prediction less than this is a poor outline.")
@click.option("--max-images", default=200, show_default=True, type=click.IntRange(min=0),
              help="Suspect images drawn in the gallery (most suspect first); the CSV lists every one.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Out-of-fold maps read at a time.")
def label_issues(study_dir: str, out_dir: str | None, postprocess: str | None, outline_iou: float,
                 max_images: int, batch_size: int) -> None:
    """Rank a study's labelled images by how likely their label is wrong.

    Each image is judged by the fold that never trained on it (the study's out-of-fold
    probabilities): per image and class a missing mask (none labelled, one confidently
    predicted), a spurious mask (labelled, confidently predicted empty there), a wrong class
    (its pixels predicted as another class) or a poor outline (labelled and predicted overlap
    little). The score (0..1, higher: more suspect) is cleanlab's segmentation label quality
    (softmin), each class scored as its own background-or-defect problem because sever's classes
    are independent and may overlap. Writes label_issues.csv (image, class, kind, score; most
    suspect first) and gallery.html (the suspects' label above, prediction below).
    """
    from sever.inference.label_issues import image_ranking, study_label_issues, write_issues_csv
    from sever.report.label_issues import write_issue_gallery
    from sever.utils.paths import check_output_path

    folder = check_output_path(Path(out_dir) if out_dir else Path(study_dir) / "label_issues", "-o", folder=True)
    result = study_label_issues(study_dir, postprocess, batch_size, outline_iou)
    folder.mkdir(parents=True, exist_ok=True)
    table = write_issues_csv(result.issues, result.class_names, folder / "label_issues.csv")
    page = write_issue_gallery(result, folder, max_images)
    click.echo(f"{len(result.issues)} suspect labels in {len(image_ranking(result.issues))} of "
               f"{sum(len(saved.names) for saved, _ in result.sources)} images")
    for issue in result.issues[:5]:
        click.echo(f"  {issue.score:.3f}  {issue.image}  {result.class_names[issue.class_index]}: {issue.kind}")
    click.echo(f"wrote {table}")
    click.echo(f"wrote {page}")
