"""Studies made by hand, without training: K folds of a dataset with a saved split, each fold's
"out-of-fold maps" drawn from the true masks, so tuning, scoring and label checks have a study in seconds.
"""

from pathlib import Path

import numpy as np

from sever.inference.evaluate import truth_batch, validation_split
from sever.inference.outputs import save_probabilities
from sever.study.folder import StudyPaths
from sever.study.folds import with_fold
from sever.study.splits import image_key, write_splits
from sever.utils.config import dump_config


def study_from_truth(data: Path, config: dict, root: Path, size: tuple[int, int], defect: tuple[int, int],
                     background: tuple[int, int], folds: int = 2) -> StudyPaths:
    """A finished study of ``config`` over ``data`` in ``root``: image i in fold ``i % folds``, each fold's
    out-of-fold maps uint8 probabilities drawn in ``defect`` (low, high) on its true masks and in
    ``background`` elsewhere; ``size`` the images' (H, W)."""
    paths = StudyPaths(root)
    paths.root.mkdir()
    dump_config(with_fold(config, folds, 0), paths.config)
    images = sorted((data / "train_images").iterdir())
    write_splits(paths.splits, {image_key(path, data): i % folds for i, path in enumerate(images)}, folds)
    paths.initialise(folds)
    rng = np.random.default_rng(0)
    for fold in range(folds):
        run_config = with_fold(config, folds, fold, paths.splits)
        paths.fold_dir(fold).mkdir()
        dump_config(run_config, paths.fold_dir(fold) / "config.yaml")
        names, truth = validation_split(run_config)
        paths.oof_dir(fold).mkdir()
        for path in names:
            mask = truth_batch(truth, [path.name], size)[0].numpy().astype(bool)  # (C, H, W)
            probs = np.where(mask, rng.integers(*defect, mask.shape), rng.integers(*background, mask.shape))
            save_probabilities(paths.oof_dir(fold), path.name, probs.astype(np.uint8))
        paths.set_status(fold, "done")
    return paths
