"""``python -m sever`` runs the command line."""

from sever.cli import cli

cli(prog_name="sever")
