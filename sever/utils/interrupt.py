"""SIGTERM and Ctrl-C (SIGINT) honoured within seconds: one process-wide stop flag, polled by long loops.

Kaggle, SLURM and Kubernetes send SIGTERM and kill the process some 30 s later. While
:func:`handled` is active (every ``sever`` command; :meth:`~sever.trainer.base.BaseTrainer.train`
on its own) the first SIGINT/SIGTERM:

- inside a *listening* section (:func:`listening`, :func:`checked`: a loop that polls) sets
  the flag; the loop stops between two batches, saves what it must and raises
  :class:`~sever.exceptions.Interrupted` (:func:`check`);
- anywhere else raises :class:`~sever.exceptions.Interrupted` at once, as Ctrl-C raises
  ``KeyboardInterrupt`` (files are written atomically, so nothing saved is left half-written).

A second signal stops at once (``KeyboardInterrupt``), unless it follows the first within
:data:`REPEAT_S` (the same stop passed on twice, e.g. by a parent to its fold processes). Forked data-loader workers inherit
the handler and ignore it: the main process decides. In a thread other than the main one
nothing is installed (Python allows handlers in the main thread only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

from sever.exceptions import Interrupted

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")

REPEAT_S = 1.0  # a second signal sooner than this after the first is the same stop, not a second one
_state = {"installed": 0, "listening": 0, "signal": None, "since": 0.0, "owner": None}


def requested() -> int | None:
    """The number of the signal that asked this process to stop, or None."""
    return _state["signal"]


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name


def stopped(what: str) -> Interrupted:
    """The :class:`Interrupted` saying that ``what`` stopped on the signal received."""
    signum = requested() or signal.SIGTERM  # in distributed work, another rank may have received it
    return Interrupted(f"{signal_name(signum)} received: {what}", signum)


def check(what: str, agree: Callable[[bool], bool] | None = None) -> None:
    """Raise :class:`Interrupted` ("stopped during ``what``") when a signal asked to stop.

    ``agree``: in distributed work, turns this rank's wish into every rank's (``Distributed.any``),
    so all ranks stop at the same batch.
    """
    wanted = requested() is not None
    if agree is not None:
        wanted = agree(wanted)
    if wanted:
        raise stopped(f"stopped during {what}")


def checked(items: Iterable[T], what: str, agree: Callable[[bool], bool] | None = None) -> Iterator[T]:
    """``items`` one by one, listening for a signal; :func:`check` before each and after the last.

    The one call a long loop needs: ``for batch in checked(loader, "validation"):``.
    """
    with listening():
        for item in items:
            check(what, agree)
            yield item
        check(what, agree)


def _on_signal(signum, frame) -> None:
    if os.getpid() != _state["owner"]:
        return  # a forked loader worker: the main process decides
    if _state["signal"] is not None:
        if time.monotonic() - _state["since"] < REPEAT_S:
            return  # the same stop twice (a parent passing on what the process group had)
        raise KeyboardInterrupt  # a second stop: at once
    _state.update(signal=signum, since=time.monotonic())
    if _state["listening"]:
        logger.warning("%s received: finishing the current step, then saving", signal_name(signum))
        return
    raise stopped("stopped")


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within: SIGINT/SIGTERM handled as the module says; the stop flag starts clear and is cleared after.

    Re-entrant: an inner one (or one off the main thread) installs nothing; the outermost
    restores the handlers it found.
    """
    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _state.update(installed=1, owner=os.getpid(), signal=None)
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.update(installed=0, listening=0, signal=None)  # a loop left unclosed by an error listens no more


@contextlib.contextmanager
def listening() -> Iterator[None]:
    """Within: a loop polls :func:`requested` or :func:`check`, so a signal only sets the flag."""
    with handled():
        _state["listening"] += 1
        try:
            yield
        finally:
            _state["listening"] -= 1
