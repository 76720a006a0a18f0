"""Planning: a dataset's fingerprint and the experiment planned from it (``sever plan``, ``sever auto``)."""
