"""Per-student classroom mode: every browser that opens the page gets its own viewer process and scene.

A small aiohttp front page listens on the address given; each visit with the classroom token starts
``slicer-xai viewer`` on a free port with a token of its own (so one student's link never opens
another's session) and redirects the browser there. A student's process stops by itself when its page
has been closed for ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web

from .cli import free_port
from .security import TOKEN_ENV, is_same_origin, new_token, tokens_match

__all__ = ["Launcher", "run_launcher"]

_READY = re.compile(r"open (http\S+)")


@dataclass
class Launcher:
    host: str
    token: Optional[str] = None
    max_sessions: int = 40
    idle_timeout_s: int = 300
    #: What every student's viewer is started with (case, model, PACS, audit: as the teacher gave them; PACS
    #: credentials reach them through the environment or the file named).
    viewer_args: list = field(default_factory=list)
    processes: list = field(default_factory=list)
    _starting: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not is_same_origin(request.headers.get("Origin"), request.host) or \
                (self.token is not None and not tokens_match(request.query.get("token"), self.token)):
            return web.Response(status=403, text="SlicerXAI classroom: this page needs the access token printed "
                                                 "when it started (…/?token=…).\n")
        browser_host = self._browser_host(request)
        if browser_host is None:
            return web.Response(status=400, text="SlicerXAI classroom: open the address printed when it started.\n")
        self.processes = [p for p in self.processes if p.returncode is None]
        # Counted before the first await: concurrent visits cannot all pass the check.
        if len(self.processes) + self._starting >= self.max_sessions:
            return web.Response(status=503, text=f"SlicerXAI classroom: all {self.max_sessions} sessions are in use; "
                                                 f"try again when a student closes theirs.\n")
        self._starting += 1
        try:
            url = await self._start_session()
        finally:
            self._starting -= 1
        return web.HTTPFound(re.sub(r"^http://[^/:]+", f"http://{browser_host}", url))

    def _browser_host(self, request: web.Request) -> Optional[str]:
        """The address the student's browser reached us by, for the redirect — never a name the request
        made up (the redirect carries the student's token): the listening address, or when listening on
        every interface, an IP literal or ``localhost``."""
        if self.host not in ("0.0.0.0", "::"):
            return f"[{self.host}]" if ":" in self.host else self.host
        host = request.url.host or ""
        if host == "localhost":
            return host
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        return f"[{address}]" if address.version == 6 else str(address)

    async def _start_session(self) -> str:
        port = free_port(self.host)
        args = [sys.executable, "-m", "XAICommandLine", "viewer", "--host", self.host, "--port", str(port),
                "--idle-timeout", str(self.idle_timeout_s), *self.viewer_args]
        # Each student's viewer has its own secret, passed in its environment (not on its command line).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: new_token()}
        process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT, env=env)
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
    """Serve the classroom page; its address is printed once it is listening (not before)."""
    app = web.Application()
    app.router.add_get("/", launcher.handle)
    app.on_shutdown.append(launcher.shutdown)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, launcher.host, port).start()
        print(f"SlicerXAI classroom (one viewer per student): open {url}  (Ctrl+C to stop)", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()  # on_shutdown: every student's viewer is stopped too

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
