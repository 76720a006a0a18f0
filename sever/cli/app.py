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
from sever.cli import data, labels, planning, prediction, publishing, training
from sever.cli.common import EXIT_USER_ERROR
from sever.exceptions import Interrupted, SeverError
from sever.utils import interrupt


VERBOSITY_FLAGS = {  # obj key: (option spellings, help); on the group and after every command name
    "debug": (("--debug",), "Show full tracebacks for errors (and debug messages)."),
    "verbose": (("-v", "--verbose"), "Log debug messages to the console."),
    "quiet": (("-q", "--quiet"), "Show warnings and errors only."),
}


def configure_logging(obj: dict) -> None:
    """Set the console up for the flags in ``obj`` (``debug`` implies ``verbose``; ``verbose`` beats ``quiet``)."""
    from sever.utils.logger import setup_logging

    setup_logging(verbose=obj["verbose"] or obj["debug"], quiet=obj["quiet"])


def _flag_after_the_command(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``sever check-data DIR -v`` means the same as ``sever -v check-data DIR``."""
    if value:
        obj = ctx.find_root().obj
        obj[param.name] = True
        configure_logging(obj)


class SeverGroup(click.Group):
    """A click group that turns :class:`SeverError` into a message and an exit code.

    Every command also takes ``--debug``, ``-v`` and ``-q`` itself, so they may follow the command name.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        for key, (spellings, help_text) in VERBOSITY_FLAGS.items():
            cmd.params.append(click.Option([*spellings, key], is_flag=True, expose_value=False,
                                           callback=_flag_after_the_command, help=help_text))
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
@click.option("--debug", is_flag=True, help=VERBOSITY_FLAGS["debug"][1])
@click.option("-v", "--verbose", is_flag=True, help=VERBOSITY_FLAGS["verbose"][1])
@click.option("-q", "--quiet", is_flag=True, help=VERBOSITY_FLAGS["quiet"][1])
@click.version_option(__version__, prog_name="sever")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, quiet: bool) -> None:
    """sever: steel-surface defect segmentation (Severstal's recipe as a framework)."""
    ctx.obj = {"debug": debug, "verbose": verbose, "quiet": quiet}
    configure_logging(ctx.obj)


for _command in (training.train, training.demo_data, prediction.predict, prediction.pseudo_label,
                 prediction.evaluate, prediction.tune, publishing.report, publishing.upload, data.convert,
                 publishing.export, data.check_data, planning.plan, planning.auto, labels.label_issues):
    cli.add_command(_command)
