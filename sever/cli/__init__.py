"""The ``sever`` command line, one module per group of commands; :mod:`sever.cli.app` holds the group."""
