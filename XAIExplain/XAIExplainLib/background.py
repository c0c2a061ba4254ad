"""Long work off the GUI thread, for the Slicer modules: a command-line run in its own process group
(:class:`ProcessJob`) or engine work in a thread (:class:`ThreadJob`).

Both offer what a Widget polls from a timer on the main thread: :meth:`poll` returns the progress reported
since the last call, ``finished`` says when the work ended, ``cancel()`` stops it. Standard library only,
no Qt: the tests drive the same objects the modules do.

Why a process group: Slicer's ``PythonSlicer`` is a launcher that starts ``python-real`` as a child
process; killing the launcher alone leaves the child computing. The run is started as the leader of a new
session (POSIX) or process group (Windows), so Cancel ends every process of the run.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["ProcessJob", "ThreadJob", "end_process_tree"]

#: Progress lines the command line prints on stderr (``XAICommandLine.progress.ProgressPrinter``).
_PROGRESS_LINE = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")
#: Seconds between SIGTERM (the command line removes its staging folder and exits 143) and SIGKILL.
TERMINATE_GRACE_S = 3.0


class _Job:
    """What both kinds of job share: a queue of progress events read by the main thread."""

    def __init__(self) -> None:
        self.cancelled = False
        self.finished = False
        self.errorMessage = ""
        self._events: "queue.Queue[Optional[tuple[float, str]]]" = queue.Queue()
        self._done = threading.Event()

    def poll(self) -> list[tuple[float, str]]:
        """``(fraction, message)`` reported since the last call; sets ``finished`` once the work has ended."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event is None:
                self.finished = True
                return events
            events.append(event)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the work has ended (True) or ``timeout`` seconds passed (False)."""
        return self._done.wait(timeout)


class ProcessJob(_Job):
    """``argv`` in a new process group, its merged output read by a thread.

    Lines ``[ 42%] message`` become progress; the last other lines are kept (``lastLines``) and the
    command line's one-line error (``slicer-xai: ...``) becomes ``errorMessage``. Output is decoded as
    UTF-8 with replacement, so no byte sequence can stop the reader.
    """

    def __init__(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> None:
        super().__init__()
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.returnCode: Optional[int] = None
        self.lastLines: list[str] = []
        self._log = log
        self._process: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    def start(self) -> "ProcessJob":
        options: dict[str, Any] = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True
        self._process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         encoding="utf-8", errors="replace", **options)
        threading.Thread(target=self._read, name="XAI output reader", daemon=True).start()
        return self

    def cancel(self) -> None:
        """End the whole process tree (SIGTERM, then SIGKILL after a grace period); idempotent."""
        if self._process is None or self._done.is_set():
            return
        self.cancelled = True
        threading.Thread(target=end_process_tree, args=(self._process,), daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                self._handle(line.rstrip())
        finally:
            self.returnCode = self._process.wait()
            if not self.cancelled and self.returnCode != 0:
                self.errorMessage = self._errorFromOutput()
            self._done.set()
            self._events.put(None)

    def _handle(self, line: str) -> None:
        if not line:
            return
        match = _PROGRESS_LINE.match(line)
        if match:
            self._events.put((int(match.group(1)) / 100.0, match.group(2)))
            return
        if self._log:
            self._log(line)
        self.lastLines = (self.lastLines + [line])[-20:]

    def _errorFromOutput(self) -> str:
        # The command line states user errors in one line starting "slicer-xai:".
        messages = [line for line in self.lastLines if line.startswith("slicer-xai:")]
        message = messages[-1] if messages else "\n".join(self.lastLines[-5:])
        message = message.replace("slicer-xai: error: ", "").replace("slicer-xai: ", "")
        return message or f"The background process stopped with exit code {self.returnCode}."


def end_process_tree(process: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """Terminate ``process`` and every process of its group; kill what is left after ``grace_s``."""
    if os.name == "nt":
        # taskkill /T walks the tree of the launcher; there is no graceful signal for a console-less group.
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
        return
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; a child that ignored SIGTERM may still hold the group.
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return


class ThreadJob(_Job):
    """``work(progress, cancel)`` in a thread; ``result`` or ``error`` once finished.

    For engine work whose result is Python objects (a sweep, a sanity check) that the main thread then
    puts into the scene. Cancel is cooperative: the engine checks the token between units of work.
    """

    def __init__(self, work: Callable[[Callable[[float, str], None], Any], Any]) -> None:
        super().__init__()
        from .progress import CancelToken

        self.result: Any = None
        self.error: Optional[BaseException] = None
        self._work = work
        self._token = CancelToken()

    def start(self) -> "ThreadJob":
        threading.Thread(target=self._run, name="XAI background work", daemon=True).start()
        return self

    def cancel(self) -> None:
        if not self._done.is_set():
            self.cancelled = True
            self._token.cancel()

    def _run(self) -> None:
        from .errors import XAICancelled

        try:
            self.result = self._work(lambda fraction, message: self._events.put((fraction, message)), self._token)
        except XAICancelled:
            self.cancelled = True
        except BaseException as error:  # handed to the main thread, which shows it
            self.error = error
            self.errorMessage = str(error) or type(error).__name__
        finally:
            self._done.set()
            self._events.put(None)
