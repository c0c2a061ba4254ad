"""Keeping a viewer to the people it is meant for.

Every HTTP request (the page, its scripts and the websocket) must carry the access token printed at start
— in the URL once, then in a cookie the page sets — on every address, loopback included (as Jupyter
does): any web page the user visits could otherwise reach ``127.0.0.1`` and drive the viewer. A request
sent from a page of another origin (its ``Origin`` header) is refused even with the cookie. Websocket
messages are bounded before memory is set aside for them, and the browser may change only what the panel
offers (see :class:`StateGuard`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

__all__ = ["new_token", "tokens_match", "token_cookie", "install_token_check", "is_same_origin",
           "limit_websocket_messages", "StateGuard", "TOKEN_ENV"]

logger = logging.getLogger(__name__)

#: The environment variable a viewer process reads its token from (never the command line, which
#: other users of the machine can read, and where a token starting with "-" looks like an option).
TOKEN_ENV = "SLICER_XAI_TOKEN"


def new_token() -> str:
    """A random token of URL-safe letters and digits that never starts with ``-`` or ``_``."""
    return "t" + secrets.token_urlsafe(18)


def tokens_match(supplied: Optional[str], token: str) -> bool:
    """Constant-time comparison that accepts any text (a non-ASCII token is just a wrong one)."""
    if not supplied:
        return False
    return hmac.compare_digest(supplied.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def token_cookie(token: str) -> str:
    """The cookie that carries ``token``: named after it, so that two viewers on one host (cookies ignore
    ports) never overwrite each other's, and the name says nothing about the token."""
    return "slicer_xai_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def is_same_origin(origin: Optional[str], host: Optional[str]) -> bool:
    """Whether a request's ``Origin`` header (absent for non-browser clients) names the address it was sent to."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


def install_token_check(server: Any, token: str) -> None:
    """Refuse (HTTP 403) every request to ``server`` that does not carry ``token`` or comes from another origin."""
    from aiohttp import web

    cookie = token_cookie(token)

    @web.middleware
    async def check_token(request: web.Request, handler):
        if not is_same_origin(request.headers.get("Origin"), request.host):
            return web.Response(status=403, text="SlicerXAI viewer: requests from other web sites are refused.\n")
        supplied = request.query.get("token") or request.cookies.get(cookie)
        if not tokens_match(supplied, token):
            return web.Response(status=403, text="SlicerXAI viewer: this page needs the access token printed "
                                                 "when the viewer started (…/?token=…).\n")
        response = await handler(request)
        if request.query.get("token") and not isinstance(response, web.WebSocketResponse):
            response.set_cookie(cookie, token, httponly=True, samesite="Strict")
        return response

    def bind(wslink_server: Any) -> None:
        wslink_server.app.middlewares.append(check_token)

    server.controller.on_server_bind.add(bind)


def limit_websocket_messages(max_bytes: int) -> None:
    """Bound every websocket message to ``max_bytes`` *before* memory is set aside for it.

    wslink reassembles chunked messages into a buffer of the size the first chunk's header claims (up to
    4 GB once a client has said hello): one 12-byte header would hold gigabytes per socket. Here memory
    grows only with the bytes that actually arrived, and a claim above the limit (or pending messages of
    one socket adding up to more) closes that socket.
    """
    import wslink.protocol
    from wslink.chunking import HEADER_LENGTH, StreamUnChunker, _decode_header

    class BoundedUnChunker(StreamUnChunker):
        def process_chunk(self, chunk: bytes):
            message_id, _offset, total_size = _decode_header(chunk[:HEADER_LENGTH])
            if message_id not in self.pending_messages:
                pending = sum(m["total_size"] for m in self.pending_messages.values())
                if total_size > max_bytes or pending + total_size > max_bytes:
                    self.pending_messages.clear()
                    raise ValueError(f"websocket message of {total_size} bytes refused (limit {max_bytes})")
            return super().process_chunk(chunk)

    wslink.protocol.UnChunker = BoundedUnChunker


class StateGuard:
    """What a browser may change in the shared state: each key the panel lets it edit, with a check of
    the value against what the panel offers. Every other key the application owns (results, progress,
    the lists offered, links) is server-only; a change to one of them, or a value that was not offered,
    is dropped and logged."""

    def __init__(self, owned_keys: set[str], checks: Mapping[str, Callable[[Any], bool]]) -> None:
        self.owned_keys = set(owned_keys)
        self.checks = dict(checks)

    def allows(self, key: str, value: Any) -> bool:
        if key not in self.owned_keys:
            return True  # trame's and trame-slicer's own keys (views, layout)
        check = self.checks.get(key)
        try:
            return bool(check is not None and check(value))
        except Exception:  # a value of an unexpected type is simply not allowed
            return False

    def filter(self, changes: list) -> list:
        allowed = []
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict) and isinstance(change.get("key"), str) and \
                    self.allows(change["key"], change.get("value")):
                allowed.append(change)
            else:
                logger.warning("refused a browser's change of %r", change.get("key") if isinstance(change, dict) else change)
        return allowed

    def install(self, server: Any) -> None:
        """Filter every ``trame.state.update`` a browser sends through :meth:`filter`."""
        import functools

        from trame_server.protocol import CoreServer

        original = CoreServer.update_state
        guard = self

        @functools.wraps(original)  # keeps wslink's RPC registration (attributes of the function)
        def update_state(protocol, changes):
            return original(protocol, guard.filter(changes))

        CoreServer.update_state = update_state


def one_of(options: Callable[[], list]) -> Callable[[Any], bool]:
    """A check: the value is one of ``options()`` (a list of ``{"value": …}`` items or plain values)."""
    def check(value: Any) -> bool:
        return any(value == (item.get("value") if isinstance(item, dict) else item) for item in options())

    return check


def number_in(low: float, high: float) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and low <= value <= high

    return check
