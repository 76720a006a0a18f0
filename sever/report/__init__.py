"""The run report: ``sever report RUN`` and the end of training write ``RUN/report/index.html``.

- :mod:`~sever.report.history`: the logged per-epoch values (TensorBoard events or ``train.log``).
- :mod:`~sever.report.validation`: the run's checkpoint scored on its validation split.
- :mod:`~sever.report.figures`: the matplotlib figures and example mosaics.
- :mod:`~sever.report.build`: the page, and what is missing from it.
"""

from sever.report.build import Report, report_after_training, write_report

__all__ = ["Report", "report_after_training", "write_report"]
