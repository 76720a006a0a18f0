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


class Interrupted(SeverError):
    """A long command stopped on request (Ctrl-C, SIGTERM), what it had saved intact.

    ``what`` says what stopped and what was saved, ``command`` (or None) the one command that
    continues; an outer layer that knows better replaces it (:meth:`resume_with`: a study's
    fold is continued by ``sever train -r STUDY``, ``sever auto`` by ``sever auto --resume``).
    The CLI prints the message and exits with 128 + ``signal_number`` (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, what: str, signal_number: int, command: str | None = None):
        self.what, self.signal_number, self.command = what, signal_number, command
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.what}. Resume with: {self.command}" if self.command else self.what

    def resume_with(self, command: str) -> "Interrupted":
        """This error, continued by ``command`` instead."""
        self.command = command
        self.args = (self._message(),)
        return self


class TrainingInterrupted(Interrupted):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a resumable checkpoint."""

    def __init__(self, what: str, checkpoint: str, signal_number: int, command: str | None = None):
        super().__init__(what, signal_number, command)
        self.checkpoint = checkpoint


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of ``exc``'s message, cut to ``limit`` characters, for a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else "no details"
    return line if len(line) <= limit else line[: limit - 3] + "..."
