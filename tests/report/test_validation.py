"""The report's validation scoring: which images are scored, the defect areas it counts, and one pass of a run's
checkpoint over its validation split (a run written with untrained weights: nothing is trained)."""

import numpy as np
import pytest
from inference_runs import make_run

from sever.data_loader.rle import rle_decode
from sever.inference.checkpoints import run_config
from sever.inference.evaluate import validation_split
from sever.report.validation import component_areas, score_validation, spread


@pytest.mark.parametrize("count, limit, expected", [
    (5, 10, [0, 1, 2, 3, 4]),  # all of them when they fit
    (10, 4, [0, 3, 6, 9]),  # the first, the last and evenly between
    (101, 3, [0, 50, 100]),
    (7, 1, [0]),
    (0, 3, []),
])
def test_spread_picks_at_most_the_limit_evenly_including_both_ends(count, limit, expected):
    assert spread(count, limit) == expected


def test_component_areas_count_each_8_connected_defect_of_each_class():
    masks = np.zeros((3, 8, 10), np.uint8)
    masks[0, 0:2, 0:3] = 1  # 6 px
    masks[0, 2, 3] = 1  # touches the first one at a corner: one component of 7 px
    masks[0, 6:8, 6:10] = 1  # 8 px apart from it
    masks[1, 4, 4] = 1  # a single pixel
    assert component_areas(masks) == [[7, 8], [1], []]


def test_one_pass_scores_the_spread_images_and_counts_their_true_defects(demo_dir, tmp_path):
    run = make_run(tmp_path / "runs", demo_dir, "untrained", seed=2)
    paths, annotations = validation_split(run_config(run))
    scores = score_validation(run, max_images=4, examples=1, postprocess=None)
    chosen = [paths[i] for i in spread(len(paths), 4)]
    assert (scores.scored, scores.total) == (len(chosen), len(paths)) and len(paths) > 4
    assert list(scores.evaluation.image_ids) == [p.name for p in chosen]
    assert scores.image_sizes.tolist() == [[64, 256]] * len(chosen)  # the demo fixture's image size
    ids = list(annotations.image_ids)
    truth = [np.stack([rle_decode(rle, (64, 256)) for rle in annotations.encodings[ids.index(p.name)]])
             for p in chosen]
    assert scores.defect_areas == [[a for t in truth for a in component_areas(t)[c]] for c in range(4)]
    assert [sum(a) for a in scores.defect_areas] == [int(sum(t[c].sum() for t in truth)) for c in range(4)]
    assert sum(map(sum, scores.defect_areas)) > 0, "the chosen images hold defects"
    assert len(scores.best) <= 1 and len(scores.worst) <= 1
    for example in scores.best + scores.worst:
        assert example.truth.shape == example.prediction.shape == (64, 256, 3)
