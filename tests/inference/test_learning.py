"""Whether each class was learned: the one judgement ``sever train``, ``sever auto`` and the report print,
from what the tuning records (the tuned and the empty predictor's Dice, the images keeping a mask)."""

import pytest
import torch

from sever.inference.learning import LEARNED_GAIN, ClassLearning, judge_classes, learning_lines
from sever.inference.tune import TuneStatistics, search_widening
from sever.model.postprocess import PostProcessing


def verdicts(tuned, empty, survivors=None, images=10):
    return judge_classes(["1 a", "2 b", "3 c"][:len(tuned)],
                         {"tuned": tuned, "empty": empty, "survivors": survivors, "images": images})


def test_a_class_is_learned_by_its_gain_over_predicting_nothing_not_by_its_tuned_dice():
    # 0.95 looks high, but predicting nothing scores 0.94 on these images: a gain of 1/6, learned;
    # 0.905 against 0.9 gains 0.05 per image showing the class: not learned, though it keeps masks
    learned, weak = verdicts([0.95, 0.905], [0.94, 0.9], [3, 4])
    assert learned.gain == pytest.approx(1 / 6) and learned.learned and not learned.switched_off
    assert weak.gain == pytest.approx(0.05) and not weak.learned and not weak.switched_off
    assert "NOT learned" in weak.describe() and "switched off" not in weak.describe()


def test_a_class_the_tuned_settings_keep_on_no_image_is_switched_off_even_with_a_gain():
    off, = verdicts([0.99], [0.5], [0])  # a gain, yet no image keeps a mask: predict will never show it
    assert off.switched_off and not off.learned
    assert "switched off by the tuned post-processing" in off.describe()


def test_false_alarms_lose_to_predicting_nothing_and_an_unshown_class_is_not_judged():
    alarms, unshown = verdicts([0.6, 1.0], [0.8, 1.0], [10, 0])
    assert alarms.gain == pytest.approx(-1.0) and not alarms.learned
    assert not unshown.shown and "not judged" in unshown.describe()


def test_the_lines_name_every_unlearned_class_and_older_records_are_not_judged():
    lines = learning_lines(verdicts([0.95, 0.9, 0.99], [0.5, 0.9, 0.5], [5, 0, 7]), "validation split")
    assert lines[-1].startswith("WARNING: 1 of 3 classes not learned: 2 b.")
    assert [line.split(": ")[1] for line in lines[:3]] == ["1 a", "2 b", "3 c"]
    assert not any(line.startswith("WARNING") for line in
                   learning_lines(verdicts([0.95, 0.99], [0.5, 0.5], [5, 7]), "x"))
    assert judge_classes(["1 a"], {"tuned": [0.9], "default": [0.8]}) is None  # recorded before "empty"
    assert learning_lines(None, "x") == []
    assert ClassLearning("x", 0.5 + LEARNED_GAIN / 2, 0.5, 3, 10).learned  # exactly the least gain counts


def test_the_tuning_records_what_the_judgement_needs(tmp_path):
    """Real tuning on made-up maps: class 1 predicted where its defects are; class 2 only as a 100-pixel false
    alarm in every image (its true 4x4 defects elsewhere), which the tuning wipes; class 3 never shown."""
    images, size = 6, 32
    truth = torch.zeros(images, 3, size, size, dtype=torch.uint8)
    probs = torch.zeros(images, 3, size, size, dtype=torch.uint8)
    for i in range(images):
        if i % 2 == 0:
            truth[i, 0, 4:14, 4:14] = 1
            probs[i, 0, 4:14, 4:14] = 230
        probs[i, 1, 20:30, 20:30] = 160
    truth[[1, 3], 1, 2:6, 2:6] = 1
    stats = TuneStatistics(PostProcessing.default(3), (0.3, 0.5, 0.7), ["1 a", "2 b", "3 c"])
    stats.update([f"{i}.jpg" for i in range(images)], probs, truth)
    result = search_widening(stats)
    recorded = result.recorded_scores()
    assert recorded["empty"] == pytest.approx([0.5, 4 / 6, 1.0])  # the share of images without each class
    assert recorded["images"] == images
    assert recorded["survivors"][0] == 3 and recorded["survivors"][1] == 0
    learned, off, unshown = judge_classes(result.class_names, recorded, result.best)
    assert learned.learned and learned.gain == pytest.approx(1.0)
    assert off.switched_off and not off.learned and f"min_pixels {result.best.min_pixels[1]}" in off.describe()
    assert result.best.min_pixels[1] > 100 or result.best.threshold[1] > 160 / 255
    assert not unshown.shown
