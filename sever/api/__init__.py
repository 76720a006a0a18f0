"""sever's Python API: what ``import sever`` offers, and what the ``sever`` commands call.

- :mod:`~sever.api.model`: :func:`~sever.api.model.load` a run, checkpoint or study as a
  :class:`~sever.api.model.Model` that predicts paths, folders and numpy images.
- :mod:`~sever.api.results`: one :class:`~sever.api.results.Result` per predicted image
  (masks, probabilities, submission rows, overlay).
- :mod:`~sever.api.training`: :func:`~sever.api.training.train` and
  :func:`~sever.api.training.auto`.
- :mod:`~sever.api.scoring`: :func:`~sever.api.scoring.evaluate` and
  :func:`~sever.api.scoring.tune`.

The layer sits between :mod:`sever.cli` and the experiment layer (``sever.experiment``,
``sever.study``, ``sever.study.auto``).
"""
