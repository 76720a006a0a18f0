"""A hand-made study for ``sever label-issues``: its out-of-fold maps drawn from the real masks of
demo data, then three of its labels corrupted (one missing mask, one wrong class, one spurious mask).
"""

import numpy as np
import pytest

from sever.data_loader.annotations import Annotations, read_rle_csv, write_rle_csv
from sever.data_loader.demo import make_demo_data
from sever.data_loader.rle import rle_encode
from sever.inference.evaluate import truth_batch, validation_split
from sever.inference.outputs import save_probabilities
from sever.study.folder import StudyPaths
from sever.study.folds import with_fold
from sever.study.splits import image_key, write_splits
from sever.utils.config import dump_config

HEIGHT, WIDTH = 64, 256


def corrupt(csv_path):
    """Drop, move and add one mask each in three images of ``csv_path``; ``{(image, class index): kind}``."""
    labels = read_rle_csv(csv_path, 4)
    encodings = labels.encodings.copy()
    single = [i for i in range(len(labels)) if (encodings[i] != "").sum() == 1]
    drop, move, blob = single[:3]
    planted = {}
    c = int(np.flatnonzero(encodings[drop] != "")[0])
    encodings[drop, c] = ""
    planted[(labels.image_ids[drop], c)] = "missing mask"
    c = int(np.flatnonzero(encodings[move] != "")[0])
    other = (c + 1) % 4
    encodings[move, other], encodings[move, c] = encodings[move, c], ""
    planted[(labels.image_ids[move], other)] = "wrong class"
    c = (int(np.flatnonzero(encodings[blob] != "")[0]) + 2) % 4
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[4:20, 200:240] = 1
    encodings[blob, c] = rle_encode(mask)
    planted[(labels.image_ids[blob], c)] = "spurious mask"
    write_rle_csv(csv_path, Annotations(labels.image_ids, encodings, labels.rows, labels.source), "train")
    return planted


@pytest.fixture
def corrupted_study(tmp_path):
    """A 2-fold study of demo data whose out-of-fold maps follow the real masks, then 3 labels corrupted."""
    from conftest import tiny_config

    data = make_demo_data(tmp_path / "data", n_train=24, n_test=2, height=HEIGHT, width=WIDTH, seed=5)
    config = tiny_config(data, tmp_path / "saved")
    paths = StudyPaths(tmp_path / "study")
    paths.root.mkdir()
    dump_config(with_fold(config, 2, 0), paths.config)
    images = sorted((data / "train_images").iterdir())
    write_splits(paths.splits, {image_key(path, data): i % 2 for i, path in enumerate(images)}, 2)
    paths.initialise(2)
    rng = np.random.default_rng(0)
    for fold in range(2):
        run_config = with_fold(config, 2, fold, paths.splits)
        paths.fold_dir(fold).mkdir()
        dump_config(run_config, paths.fold_dir(fold) / "config.yaml")
        names, truth = validation_split(run_config)
        paths.oof_dir(fold).mkdir()
        for path in names:
            mask = truth_batch(truth, [path.name], (HEIGHT, WIDTH))[0].numpy().astype(bool)  # (C, H, W)
            probs = np.where(mask, rng.integers(190, 256, mask.shape), rng.integers(0, 60, mask.shape))
            save_probabilities(paths.oof_dir(fold), path.name, probs.astype(np.uint8))
        paths.set_status(fold, "done")
    return paths, corrupt(data / "train.csv")
