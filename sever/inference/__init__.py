"""Inference on trained runs: ensembles, TTA, post-processing, submissions, scoring and tuning.

- :mod:`~sever.inference.checkpoints`: a run folder or checkpoint file -> an eval model.
- :mod:`~sever.inference.predictor`: batched full-size prediction, TTA and ensembling.
- :mod:`~sever.inference.tiling`: sliding-window prediction of images larger than a tile.
- :mod:`~sever.inference.outputs`: submission CSVs, saved probability maps, overlays.
- :mod:`~sever.inference.evaluate`: the competition metric and presence statistics.
- :mod:`~sever.inference.tune`: per-class search of post-processing settings.

The post-processing steps themselves live in :mod:`sever.model.postprocess`,
shared with validation.
"""
