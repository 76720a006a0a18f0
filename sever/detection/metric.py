"""COCO box metrics: torchmetrics' ``MeanAveragePrecision`` on the pycocotools backend.

``MeanAP`` (in ``METRICS``, the default metric of ``task: detection``) accumulates
detections and ground truth over an epoch and returns COCO's twelve summary
numbers plus per-class AP and AR::

    map      AP @ IoU 0.50:0.95, all areas, 100 detections (COCO's headline number)
    map_50   AP @ IoU 0.50         map_75   AP @ IoU 0.75
    map_small / map_medium / map_large     AP by box area (< 32², < 96², larger)
    mar_1 / mar_10 / mar_100               AR with at most 1, 10, 100 detections per image
    mar_small / mar_medium / mar_large     AR@100 by box area
    ap_K / ar_K   class K's (0-based) AP @ 0.50:0.95 and AR@100

-1 marks a value without ground truth (e.g. no small boxes), as pycocotools prints it.
:func:`map_table` formats the results like pycocotools' summary and the seed's
per-class table.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from sever.exceptions import ConfigError
from sever.registries import METRICS

SUMMARY = (
    ("map", "Average Precision", "0.50:0.95", "all", 100),
    ("map_50", "Average Precision", "0.50", "all", 100),
    ("map_75", "Average Precision", "0.75", "all", 100),
    ("map_small", "Average Precision", "0.50:0.95", "small", 100),
    ("map_medium", "Average Precision", "0.50:0.95", "medium", 100),
    ("map_large", "Average Precision", "0.50:0.95", "large", 100),
    ("mar_1", "Average Recall", "0.50:0.95", "all", 1),
    ("mar_10", "Average Recall", "0.50:0.95", "all", 10),
    ("mar_100", "Average Recall", "0.50:0.95", "all", 100),
    ("mar_small", "Average Recall", "0.50:0.95", "small", 100),
    ("mar_medium", "Average Recall", "0.50:0.95", "medium", 100),
    ("mar_large", "Average Recall", "0.50:0.95", "large", 100),
)


@METRICS.register
class MeanAP:
    """COCO mAP of scored boxes, with per-class AP and AR (see the module docstring).

    ``update(detections, targets)`` takes, per image, ``{"boxes" (M, 4), "scores" (M,),
    "labels" (M,)}`` and ``{"boxes" (N, 4), "labels" (N,)}``, boxes ``(x0, y0, x1, y1)``
    in pixels, labels 0-based.
    """

    def __init__(self):
        try:
            from torchmetrics.detection import MeanAveragePrecision

            self._metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                                class_metrics=True)
        except ImportError as exc:  # ModuleNotFoundError from either package
            raise ConfigError(f"metrics: MeanAP needs torchmetrics and pycocotools ({exc}); "
                              "install them with: pip install 'sever[detection]'") from None
        self._images = 0

    def reset(self) -> None:
        self._metric.reset()
        self._images = 0

    @property
    def empty(self) -> bool:
        """True until the first :meth:`update` after a reset."""
        return self._images == 0

    @torch.no_grad()
    def update(self, detections: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        if len(detections) != len(targets):
            raise ValueError(f"MeanAP: {len(detections)} detections for {len(targets)} targets")
        preds = [{"boxes": d["boxes"].detach().float().cpu(), "scores": d["scores"].detach().float().cpu(),
                  "labels": d["labels"].detach().long().cpu()} for d in detections]
        truth = [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].long().cpu()} for t in targets]
        self._metric.update(preds, truth)
        self._images += len(targets)

    def compute(self) -> dict[str, float]:
        if self.empty:
            raise RuntimeError("MeanAP: no batch has been added since the last reset")
        raw = self._metric.compute()
        results = {key: float(raw[key]) for key, *_ in SUMMARY}
        for k, ap, ar in zip(raw["classes"].reshape(-1).tolist(), raw["map_per_class"].reshape(-1).tolist(),
                             raw["mar_100_per_class"].reshape(-1).tolist()):
            results[f"ap_{k}"], results[f"ar_{k}"] = ap, ar
        return results


def map_table(results: dict[str, float], class_names: Sequence[str] | None = None) -> str:
    """COCO's summary lines and the per-class AP / AR table of :meth:`MeanAP.compute` results.

    Classes without an entry (no boxes, predicted or true) are left out; ``class_names``
    name the 0-based classes (default: their numbers).
    """
    lines = [
        f"{kind:<17} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = {results[key]:.3f}"
        for key, kind, iou, area, dets in SUMMARY
    ]
    classes = sorted(int(key[3:]) for key in results if key.startswith("ap_"))
    rule = "-" * 49
    lines += ["", "AP / AR per class", rule, f"|     | {'Class':<20} | {'AP':>7} | {'AR':>7} |", rule]
    for k in classes:
        name = class_names[k] if class_names is not None and k < len(class_names) else str(k)
        lines.append(f"| {k + 1:<3} | {name:<20} | {results[f'ap_{k}']:>7.3f} | {results[f'ar_{k}']:>7.3f} |")
    lines += [rule, f"| Avg | {'':<20} | {results['map']:>7.3f} | {results['mar_100']:>7.3f} |", rule]
    return "\n".join(lines)
