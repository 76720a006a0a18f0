"""Label issues from out-of-fold probabilities: planted errors of each kind rank above clean labels.

The probabilities are made from the *real* defects (blurred, noisy, shifted by a pixel, so clean
labels disagree with them a little at every edge); the labels are the real defects with one error
of each kind planted. Four clean images have an unsure model (a faint false alarm, a defect half
found at 0.6): their labels are listed too (the kinds see a disagreement), but the score, which
follows the probabilities, ranks them below every planted error. The planted images' names sort
last, so a score that ties everything would rank them last.
"""

import cv2
import numpy as np
import pytest

from sever.inference.label_issues import (KINDS, LabelIssue, batch_issues, class_quality, image_ranking, issue_kind,
                                          most_suspect_first, read_issues_csv, write_issues_csv)

SIZE, CLASSES, IMAGES = 32, 3, 16


def box(mask: np.ndarray, r0: int, c0: int, size: int) -> None:
    mask[r0:r0 + size, c0:c0 + size] = 1


def world(seed: int = 0):
    """``(real, probs, labels)``: real defects and their out-of-fold probabilities ``(N, C, H, W)``,
    the labels with four planted errors (images 0..3), and what was planted."""
    rng = np.random.default_rng(seed)
    real = np.zeros((IMAGES, CLASSES, SIZE, SIZE), np.uint8)
    for i in range(IMAGES):
        box(real[i, i % CLASSES], int(rng.integers(2, 14)), int(rng.integers(2, 14)), int(rng.integers(8, 13)))
    probs = np.empty(real.shape, np.float32)
    for i in range(IMAGES):
        for c in range(CLASSES):
            seen = np.roll(real[i, c], int(rng.integers(-1, 2)), axis=1).astype(np.float32)  # the model's pixel slip
            smooth = cv2.GaussianBlur(0.04 + 0.88 * seen, (5, 5), 1.0)
            probs[i, c] = np.clip(smooth + rng.normal(0, 0.03, seen.shape), 0, 1)
    labels = real.copy()
    planted = {}
    labels[0, 0] = 0  # a dropped mask: image 0's class 0 defect is unlabelled
    planted[(0, 0)] = "missing mask"
    box(labels[1, 2], 26, 26, 5)  # a spurious blob of class 2 where nothing is (image 1 is class 1)
    planted[(1, 2)] = "spurious mask"
    labels[2, 0], labels[2, 2] = 0, real[2, 2]  # image 2 is class 2; its mask moved to class 0
    labels[2, 0], labels[2, 2] = real[2, 2], 0
    planted[(2, 0)] = "wrong class"
    labels[3, 0] = np.roll(real[3, 0], 7, axis=(0, 1))  # image 3's class 0 outline far off
    planted[(3, 0)] = "poor outline"
    for i in (4, 5):  # an unsure false alarm of another class, away from the defect
        faint = np.zeros((SIZE, SIZE), np.uint8)
        box(faint, 0, 0, 6) if real[i].sum(0)[:8, :8].sum() == 0 else box(faint, 24, 24, 6)
        probs[i, (i + 1) % CLASSES] = np.maximum(probs[i, (i + 1) % CLASSES], 0.62 * faint)
    for i in (6, 7):  # the defect half found, unsurely
        rows = np.flatnonzero(real[i, i % CLASSES].any(1))
        probs[i, i % CLASSES, rows[len(rows) // 2]:] = np.minimum(probs[i, i % CLASSES, rows[len(rows) // 2]:], 0.42)
        probs[i, i % CLASSES, :rows[len(rows) // 2]] *= 0.68
    return real, probs, labels, planted


def name(i: int) -> str:
    return f"img{IMAGES - i:02d}"  # the planted images 0..3 sort last


def test_planted_errors_rank_first_with_their_kinds():
    real, probs, labels, planted = world()
    issues = most_suspect_first(batch_issues([name(i) for i in range(IMAGES)], probs, labels, probs > 0.5))
    ranking = image_ranking(issues)
    assert set(ranking[:4]) == {name(i) for i in range(4)}
    kinds = {(IMAGES - int(issue.image[3:]), issue.class_index): issue for issue in issues}
    for (image, c), kind in planted.items():
        assert kinds[(image, c)].kind == kind
    assert kinds[(2, 0)].other == 2  # the wrong class names the class predicted there
    assert kinds[(2, 2)].kind == "missing mask"  # ... whose own label now misses it
    assert {kinds[(4, 2)].kind, kinds[(5, 0)].kind, kinds[(6, 0)].kind, kinds[(7, 1)].kind} == {
        "missing mask", "poor outline"}  # the unsure model's disagreements are listed ...
    clean = [issue.score for issue in issues if IMAGES - int(issue.image[3:]) >= 4]
    assert min(kinds[key].score for key in planted) > max(clean)  # ... and ranked below the planted errors
    assert set(ranking[4:]) == {name(i) for i in range(4, 8)}


def test_class_quality_follows_the_probabilities():
    real, probs, labels, _ = world()
    quality = class_quality(labels[:, 0], probs[:, 0])
    assert quality.shape == (IMAGES,) and ((0 <= quality) & (quality <= 1)).all()
    assert quality[0] < quality[6] - 0.15  # the dropped mask against a clean class-0 image
    assert class_quality(labels[:, 0], 1.0 - probs[:, 0])[6] < quality[6]  # inverted probabilities: worse


@pytest.mark.parametrize("planted", [0, 1, 2, 3])
def test_issue_kind_of_each_planted_error(planted):
    real, probs, labels, kinds = world()
    (image, c), kind = next(item for item in kinds.items() if item[0][0] == planted)
    assert issue_kind(labels[image] != 0, probs[image] > 0.5, c)[0] == kind
    assert issue_kind(real[image] != 0, probs[image] > 0.5, c)[0] is None  # the real label: no issue


def test_csv_round_trip_keeps_the_order(tmp_path):
    issues = [LabelIssue("b.jpg", 1, "wrong class", 0.9, 0.0, 0), LabelIssue("a.jpg", 0, "missing mask", 0.5, 0.0)]
    path = write_issues_csv(issues, ["1 x", "2 y"], tmp_path / "issues.csv")
    rows = read_issues_csv(path)
    assert [(r["image"], r["class"], r["kind"], r["score"]) for r in rows] == [
        ("b.jpg", "2 y", "wrong class (predicted 1 x)", 0.9), ("a.jpg", "1 x", "missing mask", 0.5)]
    assert set(KINDS) == {"missing mask", "spurious mask", "wrong class", "poor outline"}
