"""Errors that are the user's to fix.

The CLI prints these as one clear message and exits non-zero; anything else is
a bug and keeps its traceback.
"""


class SeverError(Exception):
    """Base class of every error caused by input the user can correct."""


class ConfigError(SeverError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


class DataError(SeverError, ValueError):
    """A dataset, CSV or image is missing or malformed; the message names the file or row."""


class RLEError(DataError):
    """A run-length encoded mask string is malformed."""


class CheckpointError(SeverError, ValueError):
    """A checkpoint is missing, corrupt, untrusted or does not match the config."""


class TrainingError(SeverError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class DistributedError(SeverError):
    """A process of a multi-process command failed; the message names its rank and its error."""


class TrainingInterrupted(SeverError):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a resumable checkpoint."""

    def __init__(self, message: str, checkpoint: str, signal_number: int):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signal_number = signal_number


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of ``exc``'s message, cut to ``limit`` characters, for a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else "no details"
    return line if len(line) <= limit else line[: limit - 3] + "..."
