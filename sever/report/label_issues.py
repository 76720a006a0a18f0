"""The label-issues gallery: the suspect images of ``sever label-issues``, most suspect first.

The page is the report's gallery (:mod:`sever.report.gallery`): each card is one suspect image
with its label outlined above and its confident out-of-fold prediction
(:func:`~sever.inference.label_issues.confident_masks`) below, its per-class Dice, and its issues as ``kind: class score``; the filter offers
the label-issue kinds, the sort the suspects' rank.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sever.data_loader.datasets import read_grey
from sever.inference.evaluate import truth_batch
from sever.inference.label_issues import KINDS, StudyIssues, confident_masks, image_ranking
from sever.model.metric import dice_per_image
from sever.report.gallery import GALLERY_DIR, gallery_image, thumbnail, write_gallery
from sever.utils.visualization import outline_masks

MAX_IMAGES = 200  # suspects drawn by default


def _masks_of(result: StudyIssues) -> dict:
    """``name -> (SavedProbabilities, Annotations)`` of the fold that predicted it."""
    return {name: (saved, truth) for saved, truth in result.sources for name in saved.names}


def write_issue_gallery(result: StudyIssues, folder: str | Path, max_images: int = MAX_IMAGES) -> Path:
    """Draw the ``max_images`` most suspect images of ``result`` and write ``folder/gallery.html``.

    Returns:
        The page's path (thumbnails under ``folder/gallery/``).
    """
    folder = Path(folder)
    (folder / GALLERY_DIR).mkdir(parents=True, exist_ok=True)
    fold_of = _masks_of(result)
    issues_of: dict[str, list] = {}
    for issue in result.issues:
        issues_of.setdefault(issue.image, []).append([issue.kind, issue.class_index, f"{issue.score:.3f}"])
    records = []
    for rank, name in enumerate(image_ranking(result.issues)[:max_images]):
        saved, annotations = fold_of[name]
        probs, _ = saved.load(name)
        predicted = confident_masks(torch.from_numpy(probs)[None], result.settings)[0]
        truth = truth_batch(annotations, [name], probs.shape[-2:]).numpy()[0]
        image = read_grey(result.images[name])
        thumb = f"{GALLERY_DIR}/{rank:06d}.jpg"
        thumbnail(outline_masks(image, truth), outline_masks(image, predicted), folder / thumb)
        dice = dice_per_image(torch.from_numpy(predicted)[None], torch.from_numpy(truth)[None]).numpy()[0]
        record = gallery_image(name, dice, predicted, truth, thumb)
        record.errors = issues_of[name]
        record.rank = rank
        records.append(record)
    note = (f"The {len(records)} most suspect of {len(issues_of)} images whose label disagrees with the study's out-of-fold "
            f"prediction (sever label-issues; label_issues.csv lists every one). Issues: kind, class and score "
            f"(higher: more suspect).")
    return write_gallery(records, result.class_names, folder, note, kinds=KINDS, title="Label issues")
