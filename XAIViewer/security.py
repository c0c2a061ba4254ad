"""Keeping a classroom viewer to the people it is meant for.

The viewer listens on 127.0.0.1 unless told otherwise. On any other address every HTTP request
(the page, its scripts and the websocket) must carry the access token printed at start — in the URL
once, then in a cookie the page sets.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Any, Optional

__all__ = ["is_loopback", "new_token", "install_token_check", "TOKEN_COOKIE"]

TOKEN_COOKIE = "slicer_xai_token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(18)


def install_token_check(server: Any, token: str) -> None:
    """Refuse (HTTP 403) every request to ``server`` that does not carry ``token``."""
    from aiohttp import web

    @web.middleware
    async def check_token(request: web.Request, handler):
        supplied: Optional[str] = request.query.get("token") or request.cookies.get(TOKEN_COOKIE)
        if not supplied or not hmac.compare_digest(supplied, token):
            return web.Response(status=403, text="SlicerXAI viewer: this page needs the access token printed "
                                                 "when the viewer started (…/?token=…).\n")
        response = await handler(request)
        if request.query.get("token") and not isinstance(response, web.WebSocketResponse):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    def bind(wslink_server: Any) -> None:
        wslink_server.app.middlewares.append(check_token)

    server.controller.on_server_bind.add(bind)
