"""What ``Model.predict`` returns: one :class:`Result` per image, in input order, in a :class:`Results` list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sever.data_loader.annotations import format_rows
from sever.inference.outputs import SUBMISSION_FORMATS, Submission
from sever.utils.config import OutputClasses
from sever.utils.visualization import overlay_masks


@dataclass
class Result:
    """The prediction of one image.

    Attributes:
        name: the file name, or ``image0``, ``image1``, ... (the position in the input) for arrays.
        image: ``(H, W)`` uint8 grey image the model saw.
        masks: ``(C, H, W)`` bool masks, one channel per predicted class, after post-processing
            (the run's or study's tuned settings unless ``postprocess`` said otherwise).
        probabilities: ``(C, H, W)`` float32 probabilities in [0, 1] (the ensemble's, in steps of
            1/255: what post-processing thresholds) when ``probabilities=True``, else None.
        class_names: C names of the channels (``config.class_names``, else ``class 1`` ...;
            ``any defect`` for an any-defect run).
        outputs: which dataset classes the channels are (for the submission's ClassIds).
    """

    name: str
    image: np.ndarray
    masks: np.ndarray
    probabilities: np.ndarray | None
    class_names: list[str]
    outputs: OutputClasses

    def rle(self, fmt: str = "current") -> list[tuple]:
        """This image's submission rows, the same rows ``sever predict`` writes for it.

        ``fmt="current"``: ``(ImageId, EncodedPixels, ClassId)`` per dataset class (empty
        EncodedPixels for none); ``"original"``: ``(ImageId_ClassId, EncodedPixels)``.
        """
        return format_rows(self._submission().annotations(), SUBMISSION_FORMATS[fmt])

    def _submission(self) -> Submission:
        submission = Submission(len(self.masks), self.outputs)
        submission.add([self.name], self.masks[None])
        return submission

    def overlay(self, alpha: float = 0.45) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB: the image with each class's mask filled in its colour (``alpha`` opaque)."""
        return overlay_masks(self.image, self.masks, alpha)


class Results(list):
    """The :class:`Result` of each image, in input order, with the whole prediction's submission."""

    def rle(self, fmt: str = "current") -> list[tuple]:
        """Every image's submission rows, in order (see :meth:`Result.rle`)."""
        return [row for result in self for row in result.rle(fmt)]

    def to_csv(self, path: str | Path, fmt: str = "current") -> Path:
        """Write the submission CSV ``sever predict -o PATH --format FMT`` writes for these images."""
        if not self:
            raise ValueError("no results to write")
        submission = Submission(len(self[0].masks), self[0].outputs)
        for result in self:
            submission.add([result.name], result.masks[None])
        return submission.write(path, fmt)
