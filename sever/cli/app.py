"""The ``sever`` command group: every command of :mod:`sever.cli` under one name.

User errors (bad config, data or checkpoints) print one clear message and exit
with status 1; ``--debug`` shows the traceback. Heavy imports happen inside the
commands so ``sever --help`` answers at once.
"""

from __future__ import annotations

import shlex
import sys

import click

from sever import __version__
from sever.cli import data, planning, prediction, publishing, training
from sever.cli.common import EXIT_USER_ERROR
from sever.exceptions import Interrupted, SeverError
from sever.utils import interrupt

def _debug_after_the_command(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``sever train --debug`` means the same as ``sever --debug train``."""
    if value:
        from sever.utils.logger import setup_logging

        ctx.find_root().obj["debug"] = True
        setup_logging(verbose=True)


class SeverGroup(click.Group):
    """A click group that turns :class:`SeverError` into a message and an exit code.

    Every command also takes ``--debug`` itself, so it may follow the command name.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                       callback=_debug_after_the_command,
                                       help="Show full tracebacks for errors (as sever --debug)."))
        super().add_command(cmd, name)

    def main(self, args=None, *rest, **options):
        self.arguments = list(sys.argv[1:] if args is None else args)  # the command line, to run it again
        return super().main(args, *rest, **options)

    def invoke(self, ctx: click.Context):
        """Run the command with SIGINT/SIGTERM handled (:mod:`sever.utils.interrupt`).

        A stop exits with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM) and the
        one command that continues: the command's own, else the same command line again.
        """
        try:
            with interrupt.handled():
                return super().invoke(ctx)
        except Interrupted as exc:
            if exc.command is None:
                exc.resume_with(shlex.join(["sever", *getattr(self, "arguments", [])]))
            click.echo(str(exc), err=True)
            ctx.exit(128 + exc.signal_number)
        except SeverError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)


@click.group(cls=SeverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to the console.")
@click.version_option(__version__, prog_name="sever")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """sever: steel-surface defect segmentation (Severstal's recipe as a framework)."""
    from sever.utils.logger import setup_logging

    setup_logging(verbose or debug)
    ctx.obj = {"debug": debug}


for _command in (training.train, training.demo_data, prediction.predict, prediction.pseudo_label,
                 prediction.evaluate, prediction.tune, publishing.report, publishing.upload, data.convert,
                 publishing.export, data.check_data, planning.plan, planning.auto):
    cli.add_command(_command)
