"""Logging set-up from ``logging.yml``: sever's loggers on the console, other libraries' warnings only."""

from __future__ import annotations

import logging
import logging.config
import os
from importlib import resources
from pathlib import Path

import yaml

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
SEVER = "sever"  # the logger every module's logging.getLogger(__name__) sits under
CONSOLE = "console"  # the name of sever's console handler in logging.yml


class OtherLibraries(logging.Filter):
    """Passes records of loggers outside ``sever``: sever's own have their console handler already.

    The root handler sees sever's records too (they propagate, so pytest's ``caplog`` and an
    application's own root handlers still get them); without this filter they would print twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == SEVER or record.name.startswith(SEVER + "."))


def verbosity_level(verbose: bool = False, quiet: bool = False) -> int:
    """The console level for the ``-v`` / ``-q`` flags: DEBUG, WARNING, else INFO (``-v`` wins)."""
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the console for a command: sever's messages at INFO (DEBUG with ``verbose``,
    warnings and errors only with ``quiet``); other libraries' warnings and errors only.

    In distributed training only rank 0 prints INFO and DEBUG; the other ranks print
    warnings and errors, so each line appears once however many processes run.
    """
    config = yaml.safe_load(resources.files("sever.utils").joinpath("logging.yml").read_text())
    level = verbosity_level(verbose, quiet)
    # torchrun's RANK, read here without sever.utils.distributed so commands start without importing torch
    if os.environ.get("RANK", "0") != "0":
        level = logging.WARNING
    config["handlers"][CONSOLE]["level"] = logging.getLevelName(level)
    logging.config.dictConfig(config)


def console_shows(level: int) -> bool:
    """Whether sever's console prints messages of ``level``: after -q/-v, and unless the ``sever``
    logger's own level is above it (the non-main ranks of distributed training). A library user's
    unconfigured logging (root at WARNING) does not count: progress bars stay on there."""
    sever = logging.getLogger(SEVER)
    consoles = [handler.level for handler in sever.handlers if handler.get_name() == CONSOLE]
    return all(level >= shown for shown in consoles) and (sever.level == logging.NOTSET or sever.level <= level)


_SAID: set[tuple[str, str]] = set()  # (logger, message) said at INFO by info_once in this process


def info_once(logger: logging.Logger, message: str, *args) -> None:
    """Log ``message % args`` at INFO the first time this process says it, at DEBUG after.

    For what a command does more than once for one reader: a training run reads its split
    (training, self-tuning, the report) and loads its best checkpoint (tuning, the report) twice or more.
    """
    key = (logger.name, message % args)
    logger.log(logging.DEBUG if key in _SAID else logging.INFO, message, *args)
    _SAID.add(key)


def add_file_log(path: str | Path) -> logging.Handler:
    """Also write sever's log to ``path`` (a run's ``train.log``); returns the handler."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger(SEVER)
    if logger.level == logging.NOTSET or logger.level > logging.DEBUG:
        logger.setLevel(logging.DEBUG)  # the file gets everything even when used as a library
    logger.addHandler(handler)
    return handler
