"""Progress display: a tqdm bar on a terminal, one plain line every few seconds when output is a file or pipe.

tqdm without a terminal rewrites its bar with carriage returns, which a log file keeps as one endless line.
SYNTHSAE_PROGRESS_SECONDS sets the interval of the plain lines (default 5).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, TextIO


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("SYNTHSAE_PROGRESS_SECONDS", "5")))
    except ValueError:
        return 5.0


class LineProgress:
    """The part of tqdm's interface we use (iterate, update, set_postfix_str, close), printed as sparse lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0, desc: str = "",
                 disable: bool = False, file: TextIO | None = None, interval: float | None = None, **_: Any) -> None:
        self.iterable, self.desc, self.disable = iterable, desc, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.n = self.start_n = initial
        self.file = file or sys.stderr
        self.interval = _interval() if interval is None else interval
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.printed = False
        self.printed_n = initial

    def __iter__(self):
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
        tail = f" | {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done}, {now - self.t0:.0f}s, {rate:.1f}/s{tail}", file=self.file, flush=True)
        self.printed = True
        self.printed_n = self.n

    def close(self) -> None:
        """A last line with the final count, when lines were printed and the last one is out of date."""
        if not self.disable and self.printed and self.n != self.printed_n:
            self._line(time.monotonic())


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm when stderr (or `file`) is a terminal, else LineProgress; same keyword arguments as tqdm."""
    f = kwargs.get("file") or sys.stderr
    if hasattr(f, "isatty") and f.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)
