"""Was each class learned? The one judgement ``sever train``, ``sever auto`` and the report print.

A run's self-tuning (:func:`sever.inference.tune.tune_run`, on its validation split) and a
study's out-of-fold tuning (:func:`sever.study.tuning.tune_out_of_fold`) record, per class, the
tuned mean Dice (the competition metric), the empty predictor's on the same images, and the
images on which the tuned settings keep a mask (:meth:`~sever.inference.tune.TuneResult.recorded_scores`:
the checkpoint's ``postprocess_scores``, the round's entry in ``study.yml``). From them:

- **the empty predictor's score** of a class is what predicting nothing scores under the same
  metric: 1 on each image without the class, 0 on each image with it, so the share of images
  without it. The competition Dice rewards predicting nothing on rare classes, so a high tuned
  score alone says nothing;
- **the gain** is ``(tuned - empty) / (1 - empty)``: the tuned Dice the model adds beyond
  predicting nothing, per image that shows the class. With no false alarm it is the mean Dice
  over the images that show the class (``dice_defect`` of :class:`~sever.model.metric.DefectDice`);
  each false alarm on an image without the class takes its share off again, which DefectDice's
  defect score, blind to correctly-empty and wrongly-filled empty pairs alike, would not. The
  empty predictor gains 0, a perfect one 1, and predicting the class everywhere loses;
- **learned**: a gain of at least :data:`LEARNED_GAIN`, with the tuned settings keeping a mask
  on some image. The issue-27 dataset that learned nothing had validation defect Dice 0.01-0.03;
  runs that learned (NEU-Seg, the demo data) reach 0.6-0.85;
- **switched off**: the tuned settings keep no mask on any of the tuned images (a minimum size
  larger than every prediction, or a threshold above every probability): on these images,
  predicting nothing scored best, and ``sever predict`` will not predict the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from sever.inference.checkpoints import open_checkpoint
from sever.inference.predictor import class_labels
from sever.model.postprocess import PostProcessing
from sever.study.folder import StudyPaths
from sever.utils.config import load_config

# The least gain over the empty predictor (tuned Dice per image showing the class, false alarms
# subtracted) for a class to count as learned: between the 0.01-0.03 of runs that learned nothing
# and the 0.6+ of runs that did.
LEARNED_GAIN = 0.1


@dataclass(frozen=True)
class ClassLearning:
    """One class's verdict, from the scores the tuning recorded on ``images`` images.

    Attributes:
        name: the class's label (``"1 pitted"``).
        tuned: mean Dice of the tuned settings (competition metric).
        empty: mean Dice of the empty predictor on the same images (the share without the class).
        survivors: images on which the tuned settings keep a mask of this class; None when not recorded.
        images: images the tuning scored.
        settings: ``(threshold, min_pixels)`` of the tuned settings, when known.
    """

    name: str
    tuned: float
    empty: float
    survivors: int | None
    images: int | None
    settings: tuple[float, int] | None = None

    @property
    def shown(self) -> bool:
        """Some tuned image shows the class (else nothing can be judged)."""
        return self.empty < 1.0 - 1e-9

    @property
    def gain(self) -> float:
        """``(tuned - empty) / (1 - empty)``: Dice beyond predicting nothing per image showing the class."""
        return (self.tuned - self.empty) / (1.0 - self.empty) if self.shown else 0.0

    @property
    def switched_off(self) -> bool:
        """The tuned settings keep no mask of this class on any tuned image."""
        return self.survivors == 0

    @property
    def learned(self) -> bool:
        return self.shown and not self.switched_off and self.gain >= LEARNED_GAIN

    def describe(self) -> str:
        """The verdict in a phrase: ``"2 scratch: not learned (...)"``."""
        if not self.shown:
            return f"{self.name}: not judged (no tuned image shows it)"
        scores = f"tuned Dice {self.tuned:.3f}, predicting nothing {self.empty:.3f}, gain {self.gain:.3f}"
        if self.learned:
            return f"{self.name}: learned ({scores})"
        why = f"{self.name}: NOT learned ({scores} < {LEARNED_GAIN}"
        if self.switched_off:
            on = f" on the {self.images} tuned images" if self.images else ""
            tuned = (f" (threshold {self.settings[0]:g}, min_pixels {self.settings[1]})"
                     if self.settings is not None else "")
            why += f"; switched off by the tuned post-processing{tuned}: no mask survives{on}"
        return why + ")"


def judge_classes(class_names: Sequence[str], scores: Mapping, settings: PostProcessing | None = None
                  ) -> list[ClassLearning] | None:
    """Each class's verdict from recorded tuning scores; None when they lack the empty predictor's.

    Args:
        class_names: C labels.
        scores: ``tuned`` and ``empty`` (C numbers each), optional ``survivors`` (C image counts)
            and ``images`` (:meth:`~sever.inference.tune.TuneResult.recorded_scores`).
        settings: the tuned post-processing, named in a switched-off class's verdict.
    """
    tuned, empty = scores.get("tuned"), scores.get("empty")
    if tuned is None or empty is None:
        return None
    survivors = scores.get("survivors") or [None] * len(tuned)
    return [ClassLearning(name, float(t), float(e), None if s is None else int(s), scores.get("images"),
                          None if settings is None else (settings.threshold[c], settings.min_pixels[c]))
            for c, (name, t, e, s) in enumerate(zip(class_names, tuned, empty, survivors))]


def run_learning(root: str | Path) -> list[ClassLearning] | None:
    """The verdicts of a run's self-tuning (its tuned checkpoint's ``postprocess_scores``); None when not tuned."""
    opened = open_checkpoint(root)
    scores = opened.state.get("postprocess_scores")
    if not scores:
        return None
    classes = len(scores["tuned"])
    mapping = opened.state.get("postprocess")
    settings = PostProcessing.from_mapping(mapping, classes, f"{opened.source}: postprocess") if mapping else None
    return judge_classes(class_labels(opened.config.get("class_names"), classes), scores, settings)


def study_learning(root: str | Path | StudyPaths) -> list[ClassLearning] | None:
    """The verdicts of a study's out-of-fold tuning (the round it predicts with); None when not tuned."""
    study = root if isinstance(root, StudyPaths) else StudyPaths(Path(root))
    record = study.round_record()
    if record.get("class_scores") is None:
        return None
    classes = len(record["class_scores"])
    settings = PostProcessing.load(study.postprocess, classes) if study.postprocess.is_file() else None
    scores = {"tuned": record["class_scores"], "empty": record.get("empty_scores"),
              "survivors": record.get("class_survivors"), "images": record.get("tuned_images")}
    class_names = load_config(study.config).get("class_names") if study.config.is_file() else None
    return judge_classes(class_labels(class_names, classes), scores, settings)


def learning_lines(verdicts: Sequence[ClassLearning] | None, where: str) -> list[str]:
    """The lines that end a command: every class's verdict, unlearned ones named first and loudly.

    ``where``: what was scored, e.g. ``"validation split"`` or ``"out-of-fold images"``.
    """
    if verdicts is None:
        return []
    missed = [v for v in verdicts if v.shown and not v.learned]
    lines = [f"learning ({where}): {v.describe()}" for v in verdicts]
    if missed:
        names = ", ".join(v.name for v in missed)
        lines.append(f"WARNING: {len(missed)} of {len(verdicts)} classes not learned: {names}. sever predict will "
                     "(almost) never predict them; train longer or on a faster device (sever plan prints the steps "
                     "this data is expected to need) before using this model for them.")
    return lines
