"""The run report: ``sever report RUN`` and the end of training write ``RUN/report/index.html``.

- :mod:`~sever.report.history`: the logged per-epoch values (TensorBoard events or ``train.log``).
- :mod:`~sever.report.validation`: the run's checkpoint scored on its validation split.
- :mod:`~sever.report.precision`: per-class precision-recall (image-level presence, pixel level).
- :mod:`~sever.report.figures`: the matplotlib figures (each with its plotted data as JSON) and mosaics.
- :mod:`~sever.report.gallery`: ``gallery.html``, every scored validation image, filtered and sorted in the page.
- :mod:`~sever.report.build`: the page, and what is missing from it.
- :mod:`~sever.report.compare`: ``sever report STUDY`` and ``sever report RUN_A RUN_B ...``.
"""

from sever.report.build import Report, report_after_training, write_report

__all__ = ["Report", "report_after_training", "write_report"]
