"""Networks, losses, metrics, optimisers and schedules, each in a registry.

Importing this package also registers the detection parts (``FasterRCNN``,
``DetectionLoss``, ``MeanAP``), so every registry lists the same names whatever
module is imported first.
"""

from sever.detection import metric as _detection_metric  # noqa: F401  (registers MeanAP)
from sever.model import detection as _detection  # noqa: F401  (registers FasterRCNN and DetectionLoss)
