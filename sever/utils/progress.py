"""One progress display for every long loop: a tqdm bar on a terminal, plain log lines elsewhere.

Without a terminal (a Kaggle kernel's log, ``nohup``, CI) a tqdm bar is either switched off or
a stream of carriage returns. There a pass logs one line at most every
:data:`DEFAULT_INTERVAL` seconds (``SEVER_PROGRESS_INTERVAL`` in the environment changes it;
the tests use a fraction of a second) and one line when it ends::

    12:00:30 INFO    epoch 3/40: 31/68 batch (46%), 11.8 img/s, ETA 0:00:25, loss 0.4127
    12:00:55 INFO    epoch 3/40: 68/68 batch in 0:00:55, 11.9 img/s, loss 0.3990

The lines go through the ``sever.utils.progress`` logger, so ``-q`` hides them and a run's
``train.log`` keeps them. With ``-q`` there is no bar either.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from sever.exceptions import ConfigError
from sever.utils.logger import console_shows

logger = logging.getLogger(__name__)

INTERVAL_ENV = "SEVER_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between two plain progress lines of one pass

T = TypeVar("T")


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$SEVER_PROGRESS_INTERVAL``, else :data:`DEFAULT_INTERVAL`.

    Raises:
        ConfigError: the variable is set but not a number >= 0.
    """
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ConfigError(f"{INTERVAL_ENV}: expected seconds >= 0, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` rounded to the second."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class Progress:
    """Progress of one pass over ``total`` items (``None``: unknown).

    Args:
        total: items in the pass (batches, images ...), counted by :meth:`update`.
        desc: what the pass is (``"epoch 3/40"``, ``"predict"``); starts each line.
        unit: the items' unit as shown (``"img"``, ``"batch"``).
        initial: items already done before this pass started (a resumed epoch).
        interval: seconds between plain lines; None reads :func:`progress_interval`.
        clock: seconds, monotonic (replaceable in tests); None: :func:`time.monotonic`.
        terminal: draw a bar (True) or log plain lines (False); None: whether stderr is a TTY.
        leave: keep the finished bar on the terminal (a command's one pass) rather than clear it.

    Images per second count the ``images`` given to :meth:`update`, else the items when
    ``unit`` is ``"img"``; other units are shown per second as they are.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "img", *, initial: int = 0,
                 interval: float | None = None, clock: Callable[[], float] | None = None,
                 terminal: bool | None = None, leave: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.initial = self.done = initial
        self.images = 0
        self.interval = progress_interval() if interval is None else interval
        self.clock = clock or time.monotonic
        self.started = self.clock()
        self._next_line = self.started + self.interval
        self._postfix: dict[str, Any] = {}
        self._bar_rate: dict[str, str] = {}
        self._closed = False
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = None
        if terminal and console_shows(logging.INFO):
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
        self.plain = not terminal

    def update(self, n: int = 1, images: int | None = None) -> None:
        """``n`` more items done, holding ``images`` images (default: ``n`` when the unit is ``img``)."""
        self.done += n
        self.images += images if images is not None else n if self.unit == "img" else 0
        if self._bar is not None:
            if self.images and self.unit != "img":  # the rate beside the bar's own (tqdm shows items/s)
                self._bar_rate = {"img_s": f"{self.rate():.1f}"}
            self._bar.update(n)
            self._show_postfix(refresh=True)  # every step, as the bar's own rate-limited redraw may skip it
        elif self.plain and self.clock() >= self._next_line:
            logger.info("%s", self.line())
            self._next_line = self.clock() + self.interval

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counts (the loss, the run's ETA), on the bar and in plain lines, from the next
        :meth:`update` on (set them before it)."""
        self._postfix.update(values)
        if self._bar is not None:
            self._show_postfix()

    def _show_postfix(self, refresh: bool = False) -> None:
        """The bar's postfix: the images per second of the last update first, then :meth:`set_postfix`'s values."""
        self._bar.set_postfix({**self._bar_rate, **self._postfix}, refresh=refresh)

    def rate(self) -> float:
        """Images per second since the pass started (items per second for a unit other than ``img``
        without images)."""
        counted = self.images if self.images or self.unit == "img" else self.done - self.initial
        return counted / max(self.clock() - self.started, 1e-9)

    def eta(self) -> str:
        """Time left in the pass, ``H:MM:SS``, extrapolated from the items done; ``?`` before any."""
        done = self.done - self.initial
        if self.total is None or done <= 0:
            return "?"
        return format_duration((self.total - self.done) * (self.clock() - self.started) / done)

    def line(self, final: bool = False) -> str:
        """The plain progress line: counts, images per second and the ETA (the elapsed time when ``final``)."""
        counts = f"{self.done}/{self.total} {self.unit}" if self.total is not None else f"{self.done} {self.unit}"
        per_second = "img/s" if self.images or self.unit == "img" else f"{self.unit}/s"
        if final:
            text = f"{self.desc}: {counts} in {format_duration(self.clock() - self.started)}"
        else:
            share = f" ({100 * self.done // self.total}%)" if self.total else ""
            text = f"{self.desc}: {counts}{share}"
        text += f", {self.rate():.1f} {per_second}"
        if not final:
            text += f", ETA {self.eta()}"
        return text + "".join(f", {key} {value}" for key, value in self._postfix.items())

    def close(self, finished: bool = True) -> None:
        """End the pass: the bar goes; without a terminal the final line is logged (when ``finished``)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.plain and finished:
            logger.info("%s", self.line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(finished=kind is None)


def progress(items: Iterable[T], desc: str, unit: str = "img", total: int | None = None, **options: Any) -> Iterator[T]:
    """Yield ``items`` with a :class:`Progress` of one per item (``total``: ``len(items)`` when it has one).

    The final line is logged only when the iteration runs to its end.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    shown = Progress(total, desc, unit, **options)
    finished = False
    try:
        for item in items:
            yield item
            shown.update()
        finished = True
    finally:
        shown.close(finished)
