"""Box detection: the NEU-DET seed's Faster R-CNN task, on sever's data, trainer and config.

- :mod:`sever.detection.data`: VOC datasets, mosaic, ``DetectionTransforms`` and ``VOCDataLoader``.
- :mod:`sever.detection.metric`: COCO mAP (``MeanAP``) and the per-class AP/AR table.
- :mod:`sever.detection.trainer`: ``DetectionTrainer``.
- :mod:`sever.detection.predict`: scored boxes from detector checkpoints, and drawing them.
- :mod:`sever.detection.from_masks`: a segmentation model scored as a detector.

The networks are in :mod:`sever.model.detection`.
"""
