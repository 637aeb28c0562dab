"""Absolute URLs in responses: the API's public base URL, known for the request being answered.

The base is the `PUBLIC_BASE_URL` setting when set (behind a proxy that rewrites host, scheme or path), else
the request's own: scheme and `Host` as the client sent them (uvicorn applies `X-Forwarded-Proto`/`-For` from
trusted proxies) plus the ASGI `root_path`. A pure ASGI middleware stores it in a context variable for the
request's task (and the threads its sync routes run in), so views build links without a `Request` in hand.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

_BASE_URL: ContextVar[str] = ContextVar("public_base_url", default="")


def absolute_url(path: str) -> str:
    """`path` (starting with '/') prefixed with the current request's public base URL ('' outside a request)."""
    return _BASE_URL.get() + path


def request_base_url(scope: Scope, public_base_url: str | None) -> str:
    """The base URL without a trailing slash: the setting, or the request's scheme, host and root path."""
    if public_base_url:
        return public_base_url.rstrip("/")
    return str(Request(scope).base_url).rstrip("/")


class PublicBaseUrlMiddleware:
    def __init__(self, app: ASGIApp, public_base_url: str | None) -> None:
        self.app, self.public_base_url = app, public_base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _BASE_URL.set(request_base_url(scope, self.public_base_url))
        try:
            await self.app(scope, receive, send)
        finally:
            _BASE_URL.reset(token)
