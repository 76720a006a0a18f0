"""Logging set-up from ``logging.yml``."""

from __future__ import annotations

import logging
import logging.config
import os
from importlib import resources
from pathlib import Path

import yaml

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Configure console logging for a command (DEBUG with ``verbose``).

    In distributed training only rank 0 prints INFO and DEBUG; the other ranks print
    warnings and errors, so each line appears once however many processes run.
    """
    text = resources.files("sever.utils").joinpath("logging.yml").read_text()
    config = yaml.safe_load(text)
    if verbose:
        config["handlers"]["console"]["level"] = "DEBUG"
    # torchrun's RANK, read here without sever.utils.distributed so commands start without importing torch
    if os.environ.get("RANK", "0") != "0":
        config["handlers"]["console"]["level"] = "WARNING"
    logging.config.dictConfig(config)


def add_file_log(path: str | Path) -> logging.Handler:
    """Also write sever's log to ``path`` (a run's ``train.log``); returns the handler."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("sever")
    if logger.level == logging.NOTSET or logger.level > logging.DEBUG:
        logger.setLevel(logging.DEBUG)  # the file gets everything even when used as a library
    logger.addHandler(handler)
    return handler
