"""``python -m sever`` runs the command line."""

from sever.cli.app import cli

cli(prog_name="sever")
