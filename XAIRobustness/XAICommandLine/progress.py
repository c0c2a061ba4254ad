"""Progress of a command-line run, on stderr (the Slicer modules read these lines from a background run)."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressPrinter", "PROGRESS_ENV"]

#: Set to ``all`` by a program that reads the progress lines (the Slicer modules): every step is printed
#: from the start, so a progress bar moves at once and a short run still ends at 100 %.
PROGRESS_ENV = "SLICER_XAI_PROGRESS"


class ProgressPrinter:
    """Progress on stderr once a run has taken more than a second (from the start with
    ``SLICER_XAI_PROGRESS=all``); a bar on a terminal, lines otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, delay_s: Optional[float] = None, every_s: float = 0.5) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.delay_s = delay_s if delay_s is not None else (0.0 if os.environ.get(PROGRESS_ENV) == "all" else 1.0)
        self.every_s = every_s
        self.last = 0.0
        self.last_message = ""
        self.shown = False
        self.tty = stream.isatty()

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self.start < self.delay_s:
            return
        if now - self.last < self.every_s and message == self.last_message and fraction < 1.0:
            return
        self.last, self.last_message, self.shown = now, message, True
        percent = int(round(100 * fraction))
        if self.tty:
            bar = "#" * (percent // 4)
            self.stream.write(f"\r[{bar:<25}] {percent:3d}% {message[:60]:<60}")
        else:
            self.stream.write(f"[{percent:3d}%] {message}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()
