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
    import sys

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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "sever", *args]
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
