"""Per-student classroom mode: every browser that opens the page gets its own viewer process and scene.

A small aiohttp front page listens on the address given; each visit starts ``slicer-xai viewer`` on a
free port (same address, same access token) and redirects the browser there. A student's process
stops by itself when its page has been closed for ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web

from .cli import free_port

__all__ = ["Launcher", "run_launcher"]

_READY = re.compile(r"open (http\S+)")


@dataclass
class Launcher:
    host: str
    case: Optional[str] = None
    model: Optional[str] = None
    token: Optional[str] = None
    max_sessions: int = 40
    idle_timeout_s: int = 300
    processes: list = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.token is not None:
            supplied = request.query.get("token", "")
            if not hmac.compare_digest(supplied, self.token):
                return web.Response(status=403, text="SlicerXAI classroom: this page needs the access token printed "
                                                     "when it started (…/?token=…).\n")
        self.processes = [p for p in self.processes if p.returncode is None]
        if len(self.processes) >= self.max_sessions:
            return web.Response(status=503, text=f"SlicerXAI classroom: all {self.max_sessions} sessions are in use; "
                                                 f"try again when a student closes theirs.\n")
        url = await self._start_session()
        browser_host = request.url.host or "127.0.0.1"
        return web.HTTPFound(re.sub(r"^http://[^/:]+", f"http://{browser_host}", url))

    async def _start_session(self) -> str:
        port = free_port(self.host)
        args = [sys.executable, "-m", "XAIExplainLib.cli", "viewer", "--host", self.host, "--port", str(port),
                "--idle-timeout", str(self.idle_timeout_s)]
        if self.case:
            args.append(self.case)
        if self.model:
            args += ["--model", self.model]
        if self.token:
            args += ["--token", self.token]
        process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT,
                                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.processes.append(process)
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            if not line:
                raise web.HTTPInternalServerError(text="A viewer session failed to start.\n")
            match = _READY.search(line.decode(errors="replace"))
            if match:
                asyncio.ensure_future(_drain(process))
                return match.group(1)

    async def shutdown(self, _app: web.Application) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.terminate()


async def _drain(process) -> None:
    """Keep reading a session's output so that it never blocks on a full pipe."""
    while await process.stdout.readline():
        pass


def run_launcher(launcher: Launcher, port: int, url: str) -> None:
    app = web.Application()
    app.router.add_get("/", launcher.handle)
    app.on_shutdown.append(launcher.shutdown)
    print(f"SlicerXAI classroom (one viewer per student): open {url}  (Ctrl+C to stop)", flush=True)
    web.run_app(app, host=launcher.host, port=port, print=None)

