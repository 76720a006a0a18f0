"""K-fold studies: one package for the study folder, its saved split, its folds, rounds and tuning, and ``sever auto``.

Modules, each in the layer its imports allow (``tests/test_layers.py``):

- :mod:`~sever.study.folder` (foundation): ``StudyPaths``, the study file ``study.yml``
  (validated on read) and the time budget's ledger.
- :mod:`~sever.study.splits` (foundation): ``splits.json``, the saved fold of every image.
- :mod:`~sever.study.tuning` (inference): the out-of-fold maps and their one tuning.
- :mod:`~sever.study.rounds` (experiment): pseudo-label rounds and the end of each round.
- :mod:`~sever.study.folds` (experiment): training a round's folds, in this process or in fold processes.
- :mod:`~sever.study.final` (experiment): the final model on every labelled image, after the folds.
- :mod:`~sever.study.train` (experiment): making, training and resuming a study.
- :mod:`~sever.study.auto` (experiment): ``sever plan``'s dataset planning and ``sever auto``.
"""
