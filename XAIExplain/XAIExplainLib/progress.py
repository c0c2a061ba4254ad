"""Progress reporting and cancellation for long work.

Long engine calls take a ``progress`` callable ``(fraction, message) -> None`` and a
:class:`CancelToken`. The command line prints progress on stderr, the Slicer modules drive a progress
bar; both cancel by calling :meth:`CancelToken.cancel` (thread-safe).
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import XAICancelled

__all__ = ["ProgressCallback", "CancelToken", "Stage"]

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """A flag set by the user interface and checked by the engine between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise XAICancelled("Cancelled by the user; no results were kept.")


class Stage:
    """Maps the progress of one step onto its share ``[start, end)`` of the whole run."""

    def __init__(
        self,
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        self._progress = progress
        self._cancel = cancel
        self.start = start
        self.end = end

    def report(self, fraction: float, message: str) -> None:
        """Report ``fraction`` (0..1) of this stage done; raises :class:`XAICancelled` when asked to stop."""
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()
        if self._progress is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            self._progress(self.start + (self.end - self.start) * fraction, message)

    def sub(self, start: float, end: float) -> "Stage":
        """A stage covering ``[start, end)`` of this one."""
        span = self.end - self.start
        return Stage(self._progress, self._cancel, self.start + span * start, self.start + span * end)
