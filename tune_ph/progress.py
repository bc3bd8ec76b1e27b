"""Progress of a long stage: a bar with a rate and time left on a terminal, else a line every tenth."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")


class Progress:
    """How far a stage is, in units of work (reads, samples): a bar on a terminal, else a line every tenth.

    mode: "auto" (a bar when stderr is a terminal, else lines), "bar", "lines" (printed, flushed, on stdout: the
    search's console), "log" (the same lines through logging, e.g. inside a trial) or "off". A tqdm bar written to
    a file is a carriage-return smear of hundreds of updates; a user reading a log wants ten lines.
    """

    def __init__(
        self,
        total: int,
        what: str = "read vectors",
        mode: str = "auto",
        stream: TextIO | None = None,
        unit: str = "reads",
    ):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.total, self.what, self.mode, self.stream, self.unit = total, what, mode, stream, unit
        self.done = 0
        self.started = time.perf_counter()
        self._tenths = 0
        self._bar = (
            tqdm(total=total, desc=what, unit=unit.rstrip("s"), unit_scale=True, dynamic_ncols=True)
            if mode == "bar"
            else None
        )

    def line(self) -> str:
        """`read vectors: 30% (69,330 of 231,100 reads), 182 reads/s, about 14 min left`."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = 100 * self.done // max(self.total, 1)
        when = "done" if self.done >= self.total else _duration(left)
        return f"{self.what}: {share}% ({self.done:,} of {self.total:,} {self.unit}), {rate:,.0f} {self.unit}/s, {when}"

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """items, each counted as one unit done once the loop's body has finished with it (continue included)."""
        for item in items:
            yield item
            self.update(1)

    def update(self, done: int) -> None:
        self.done += done
        if self._bar is not None:
            self._bar.update(done)
            return
        tenths = 10 * self.done // max(self.total, 1)
        if tenths > self._tenths and self.mode in ("lines", "log"):
            self._tenths = tenths
            if self.mode == "log":
                log.info("%s", self.line())
            else:
                print(self.line(), file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def bar_disable(show: bool) -> bool | None:
    """tqdm's ``disable`` for a short stage's bar, wanted when ``show``: None lets tqdm decide, and it draws the bar on
    a terminal only (in a log file a bar is a carriage-return smear; the stage logs its own line there)."""
    return None if show else True


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "time left unknown"
    if seconds < 1:
        return "less than 1 s left"  # not "done": a stage at 90 % of a few seconds is not done
    if seconds < 90:
        return f"about {seconds:.0f} s left"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min left"
    return f"about {seconds / 3600:.1f} h left"
