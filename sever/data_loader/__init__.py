"""Reading, augmenting and batching steel images with their masks or boxes.

Importing this package also registers the detection parts (``VOCDataLoader``,
``DetectionTransforms``), so the registries list the same names whatever module
is imported first.
"""

from sever.detection import data as _detection_data  # noqa: F401  (registers VOCDataLoader, DetectionTransforms)
