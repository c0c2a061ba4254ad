"""The audit's results file: one JSON line per finished case, appended as it finishes, so that nothing
finished is lost and a restart picks up where the last run stopped.

Only the client process writes (workers return their rows), one ``write`` of a whole line on a file opened
for appending, followed by ``fsync``: a crash can leave at most a truncated last line, which reading skips
(and the case is run again). A case is counted once: the first finished row of a name wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

__all__ = ["ResultStore", "RESULTS_FILE"]

RESULTS_FILE = "cases.jsonl"


class ResultStore:
    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / RESULTS_FILE

    def rows(self) -> list[dict]:
        """The finished cases, first row per case name, in the order they finished."""
        seen, rows = set(), []
        for row in self._read():
            if row["case"] not in seen:
                seen.add(row["case"])
                rows.append(row)
        return rows

    def done(self) -> set[str]:
        return {row["case"] for row in self.rows()}

    def append(self, row: dict) -> None:
        line = (json.dumps(row, allow_nan=True, default=_plain) + "\n").encode("utf-8")
        descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line a crash cut short ends here, so the new row starts a line of its own
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _read(self) -> Iterator[dict]:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the line a crash cut short: that case runs again
                    continue
                if isinstance(row, dict) and isinstance(row.get("case"), str):
                    yield row


def _plain(value):
    """numpy scalars and the like, as JSON numbers."""
    try:
        return value.item()
    except AttributeError:
        return str(value)
