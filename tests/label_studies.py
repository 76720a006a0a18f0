"""A hand-made study for ``sever label-issues``: its out-of-fold maps drawn from the real masks of
demo data, then three of its labels corrupted (one missing mask, one wrong class, one spurious mask).
"""

import numpy as np
import pytest
from made_studies import study_from_truth

from sever.data_loader.annotations import Annotations, read_rle_csv, write_rle_csv
from sever.data_loader.demo import make_demo_data
from sever.data_loader.rle import rle_encode

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
    paths = study_from_truth(data, config, tmp_path / "study", (HEIGHT, WIDTH), (190, 256), (0, 60))
    return paths, corrupt(data / "train.csv")
