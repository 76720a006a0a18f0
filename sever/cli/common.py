"""What the command modules share: the exit code of a user error, the torchrun relaunch, ``HxW`` options."""

from __future__ import annotations

import logging

import click

from sever.exceptions import ConfigError

logger = logging.getLogger("sever")

EXIT_USER_ERROR = 1


def launch_distributed(ctx: click.Context, nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine; returns its exit code.

    The command line is rebuilt from the options the user gave (defaults stay defaults), less ``--nproc``.
    """
    import subprocess

    from sever.utils.distributed import torchrun_command

    args = [f"--{flag}" for flag in ("debug", "verbose", "quiet") if ctx.obj.get(flag)]
    args.append(ctx.info_name)
    for param in ctx.command.params:
        if param.name == "nproc" or param.name not in ctx.params:
            continue
        if ctx.get_parameter_source(param.name) is click.core.ParameterSource.DEFAULT:
            continue
        values = ctx.params[param.name] if param.multiple else (ctx.params[param.name],)
        option = max(param.opts, key=len)
        for value in values:
            if getattr(param, "is_flag", False):
                args.append(option if value else param.secondary_opts[0])
            else:
                args.append(f"{option}={value}")
    command = torchrun_command(nproc, args)
    logger.info("launching %d processes: %s", nproc, " ".join(command))
    return subprocess.run(command, check=False).returncode


def size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """An ``HxW`` option as ``(height, width)`` pixels, or None when not given."""
    if value is None:
        return None
    from sever.inference.evaluate import parse_size

    try:
        return parse_size(value)
    except ConfigError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH in pixels, e.g. 256x1600, got {value!r}") from None


class LabelFormat(click.Choice):
    """A label format: a registered source of masks (:func:`~sever.data_loader.sources.mask_formats`), listed
    when asked, so a source registered with ``@register_source`` is offered too; ``mask-folder`` is
    accepted for ``mask_folder`` (any hyphen for an underscore).

    Args:
        writable: only the formats ``sever convert`` writes (:data:`sever.data_loader.convert.WRITABLE`).
    """

    def __init__(self, writable: bool = False):
        self.writable = writable
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from sever.data_loader.convert import WRITABLE
        from sever.data_loader.sources import mask_formats

        return tuple(name for name in mask_formats() if not self.writable or name in WRITABLE)

    @choices.setter
    def choices(self, value) -> None:
        """Ignored: the choices are the registry's at the time they are asked."""

    def convert(self, value, param, ctx):
        return super().convert(value.replace("-", "_") if isinstance(value, str) else value, param, ctx)
