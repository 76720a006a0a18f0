"""sever tune: the per-class search is exact, keeps the base settings in the grid, and its YAML is usable."""

import re

import numpy as np
import pytest
import torch
from inference_runs import invoke, runs  # noqa: F401 (fixture)

from sever.data_loader.rle import rle_encode
from sever.exceptions import ConfigError
from sever.inference.outputs import save_probabilities
from sever.inference.tune import TuneStatistics, search_widening
from sever.model.metric import dice_per_image
from sever.model.postprocess import PostProcessing


def synthetic(n=6, size=8):
    """Probabilities and truth for 2 classes where the best settings are known.

    Class 0: every image has a true 4x4 square at p=0.70 and noise pixels at p=0.549 outside it,
    so thresholds from 0.55 up are perfect. Class 1: odd images have a true 4x4 square, even
    images a 3-pixel false blob, all at p=0.9, so a minimum between 4 and 16 pixels is perfect.
    """
    probs = torch.zeros(n, 2, size, size, dtype=torch.uint8)
    truth = torch.zeros(n, 2, size, size, dtype=torch.uint8)
    probs[:, 0, 0, 4:] = 140  # 140 / 255 = 0.549
    probs[:, 0, 2:6, 0:4] = 179
    truth[:, 0, 2:6, 0:4] = 1
    probs[1::2, 1, 4:8, 4:8] = 230
    truth[1::2, 1, 4:8, 4:8] = 1
    probs[0::2, 1, 0, 0:3] = 230
    return probs, truth


def gathered(base, thresholds=(0.3, 0.55, 0.7), class_probs=None):
    probs, truth = synthetic()
    stats = TuneStatistics(base, thresholds, ["class 1", "class 2"])
    stats.update([f"{i}.jpg" for i in range(3)], probs[:3], truth[:3], None if class_probs is None else class_probs[:3])
    stats.update([f"{i}.jpg" for i in range(3, 6)], probs[3:], truth[3:], None if class_probs is None else class_probs[3:])
    return stats, probs, truth


def test_search_finds_the_known_best_and_its_score_is_exact():
    base = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0, "one_class_per_pixel": False}, 2)
    stats, probs, truth = gathered(base)
    result = stats.search(min_pixels=[0, 2, 10, 20])
    best = result.best
    assert best.threshold[0] >= 0.55 and 4 <= best.min_pixels[1] <= 16  # every such pair is perfect
    assert result.thresholds == [0.3, 0.5, 0.55, 0.7]  # the base threshold is always tried
    np.testing.assert_allclose(result.best_scores, [1.0, 1.0])
    # base: class 0 keeps its 4 noise pixels (Dice 32 / 36), class 1 keeps the false blobs of 3 images
    np.testing.assert_allclose(result.base_scores, [8 / 9, 0.5])
    for settings, scores in ((best, result.best_scores), (base, result.base_scores)):
        direct = dice_per_image(settings.apply(probs), truth).mean(0).numpy()
        np.testing.assert_allclose(direct, scores)  # the search scores exactly what prediction produces


def test_a_tie_keeps_the_base_settings():
    base = PostProcessing.from_mapping({"threshold": 0.6, "min_pixels": [0, 10]}, 2)
    result = gathered(base)[0].search(min_pixels=[0, 5, 12])
    assert result.best == base


def test_c_factor_is_searched_with_a_classifier():
    base = PostProcessing.from_mapping({"threshold": 0.6, "min_pixels": [0, 2], "classifier": {"c_factor": 1}}, 2)
    class_probs = torch.tensor([[1.0, 0.0], [1.0, 1.0]] * 3)  # the classifier sees through the false blobs
    stats, probs, truth = gathered(base, class_probs=class_probs)
    result = stats.search(min_pixels=[2], c_factors=[1, 2])
    assert result.best.c_factor == (1.0, 2.0)  # t = 2 * 2 - 2 * 1 * 0 = 4 wipes the 3-pixel blobs
    np.testing.assert_allclose(result.best_scores, [1.0, 1.0])
    direct = dice_per_image(result.best.apply(probs, class_probs), truth).mean(0).numpy()
    np.testing.assert_allclose(direct, result.best_scores)
    assert "c_factor at threshold" in result.tables()


def test_component_domination_cannot_be_tuned_per_class():
    with pytest.raises(ConfigError, match="component_domination"):
        TuneStatistics(PostProcessing.default(2).replace(component_domination=True), [0.5], ["a", "b"])


def mean_line(text, label="mean"):
    return [float(v) for v in re.search(rf"^{label}\s+([\d.]+)\s+([\d.]+)", text, re.M).groups()]


def test_cli_tune_on_a_split_then_evaluate_with_the_tuned_file(runs, tmp_path):
    out = tmp_path / "tuned.yml"
    result = invoke("tune", "-m", runs["fpn"], "--split", "val", "--num-workers", 0, "-o", out,
                    "--thresholds", "0.4,0.6", "--min-pixels", "0,100,1000")
    assert result.exit_code == 0, result.output
    base, tuned = mean_line(result.output)
    assert "threshold  min_pixels" in result.output
    # the printed choice per class is the file's, and both columns are what evaluate scores
    chosen = PostProcessing.load(out, 4)
    summary = re.findall(r"^class \d\s+[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+-$", result.output, re.M)
    assert summary == [(f"{t:g}", str(m)) for t, m in zip(chosen.threshold, chosen.min_pixels)], result.output
    scored = invoke("evaluate", "-m", runs["fpn"], "--split", "val", "--postprocess", out, "--num-workers", 0)
    assert f"mean Dice {tuned:.4f}" in scored.output
    untuned = invoke("evaluate", "-m", runs["fpn"], "--split", "val", "--num-workers", 0)
    assert f"mean Dice {base:.4f}" in untuned.output


def one_best():
    """Two images, two classes, where exactly one grid point per class scores a perfect Dice.

    Class 0: image 0 has a true 500-pixel block at p=0.47 and 140 false pixels at p=0.42; image 1
    a false 300-pixel blob at p=0.9. Only threshold 0.45 (in 0.4, 0.45, 0.5, 0.55) keeps the block
    alone, only min_pixels 400 (in 0, 200, ..., 800) wipes the blob and keeps the block.
    Class 1: image 0 has a false 150-pixel blob at p=0.9; image 1 a true 250-pixel block at
    p=0.52 and 100 false pixels at p=0.47: only threshold 0.5 and min_pixels 200 are perfect.
    """
    probs = np.zeros((2, 2, 32, 48), np.uint8)
    truth = np.zeros((2, 2, 32, 48), np.uint8)
    probs[0, 0, 0:20, 0:25], truth[0, 0, 0:20, 0:25] = 120, 1
    probs[0, 0, 25:32, 0:20] = 107
    probs[1, 0, 0:15, 0:20] = 230
    probs[0, 1, 0:10, 30:45] = 230
    probs[1, 1, 20:30, 0:25], truth[1, 1, 20:30, 0:25] = 133, 1
    probs[1, 1, 0:10, 30:40] = 120
    return probs, truth


ONE_BEST_GRID = {"thresholds": [0.4, 0.45, 0.5, 0.55], "min_pixels": [0, 200, 400, 600, 800]}


def test_the_search_picks_the_only_perfect_settings_of_each_class():
    probs, truth = one_best()
    base = PostProcessing.from_mapping({}, 2)  # threshold 0.5, no min_pixels
    stats = TuneStatistics(base, ONE_BEST_GRID["thresholds"], ["a", "b"])
    stats.update(["0.jpg", "1.jpg"], torch.from_numpy(probs), torch.from_numpy(truth))
    result = search_widening(stats, ONE_BEST_GRID["min_pixels"])
    assert result.best.threshold == (0.45, 0.5) and result.best.min_pixels == (400, 200)
    np.testing.assert_allclose(result.best_scores, [1.0, 1.0])
    # base: class 0 misses the block and keeps the blob; class 1 is right on image 1 only
    np.testing.assert_allclose(result.base_scores, [0.0, 0.5])
    assert result.edges() == []  # both answers are inside their grids: nothing to widen


def test_cli_tune_from_saved_probabilities_finds_the_known_best(tmp_path):
    probs, truth = one_best()
    (tmp_path / "probs").mkdir()
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i in range(2):
        save_probabilities(tmp_path / "probs", f"{i}.jpg", probs[i])
        rows += [f"{i}.jpg,{k + 1},{rle_encode(truth[i, k])}" for k in range(2) if truth[i, k].any()]
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    result = invoke("tune", "--probs", tmp_path / "probs", "--truth", tmp_path / "truth.csv", "-o", tmp_path / "pp.yml",
                    "--thresholds", ",".join(map(str, ONE_BEST_GRID["thresholds"])),
                    "--min-pixels", ",".join(map(str, ONE_BEST_GRID["min_pixels"])))
    assert result.exit_code == 0, result.output
    assert mean_line(result.output) == [0.25, 1.0] and "(2 images)" in result.output
    tuned = PostProcessing.load(tmp_path / "pp.yml", 2)
    assert tuned.threshold == (0.45, 0.5) and tuned.min_pixels == (400, 200)


def test_tuning_by_a_deadline_reads_an_even_share_of_every_fold_and_says_so(tmp_path, caplog):
    import logging

    from sever.data_loader.annotations import read_rle_csv
    from sever.inference.outputs import SavedProbabilities
    from sever.inference.tune import statistics_from_saved
    from sever.utils.time_budget import Deadline, spread_order

    probs, truth = synthetic(n=16)
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i in range(16):
        (tmp_path / f"fold{i % 2}").mkdir(exist_ok=True)
        save_probabilities(tmp_path / f"fold{i % 2}", f"{i}.jpg", probs[i].numpy())  # two folds of 8 images
        rows += [f"{i}.jpg,{k + 1},{rle_encode(truth[i, k].numpy())}" for k in range(2) if truth[i, k].any()]
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    sources = [(saved, read_rle_csv(tmp_path / "truth.csv", 2, image_ids=saved.names))
               for saved in (SavedProbabilities([tmp_path / f"fold{k}"]) for k in range(2))]
    ticks = iter(range(1, 100))
    deadline = Deadline(5.0, clock=lambda: float(next(ticks)), start=0.0)  # a second a reading: ends at the 5th
    with caplog.at_level(logging.INFO, logger="sever"):
        stats = statistics_from_saved(sources, None, (0.5,), ["a", "b"], batch_size=1, deadline=deadline)
    spread = [[saved.names[i] for i in spread_order(8)] for saved, _ in sources]
    assert stats.image_ids == [spread[0][0], spread[1][0], spread[0][1], spread[1][1], spread[0][2]]
    assert "tuning on 5 of 16 images: the time budget ends" in caplog.text
    whole = statistics_from_saved(sources, None, (0.5,), ["a", "b"], batch_size=1)
    assert sorted(whole.image_ids) == sorted(f"{i}.jpg" for i in range(16))  # no deadline: every image
