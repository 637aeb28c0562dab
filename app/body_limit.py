"""Request bodies are capped before anything parses them (ASGI middleware).

A declared `Content-Length` over the cap is answered 413 at once, without reading the body; a body without one
(chunked) is counted as it streams and refused as soon as it passes the cap. Multipart uploads (`POST /v1/models`,
`POST /v1/datasets`) have their own, larger limits enforced while they stream to disk (app/uploads.py).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PROBLEM_MEDIA_TYPE, TYPE_PREFIX, ApiError


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "body_too_large",
            f"request body is larger than the limit of {limit} bytes (setting MAX_JSON_BODY_BYTES)",
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, exempt_posts: frozenset[str]) -> None:
        self.app, self.limit, self.exempt_posts = app, limit, exempt_posts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"].rstrip("/") in self.exempt_posts):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)  # rendered as a 413 Problem by the error handlers
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        problem = {
            "type": f"{TYPE_PREFIX}body_too_large",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"request body is larger than the limit of {self.limit} bytes (setting MAX_JSON_BODY_BYTES)",
            "code": "body_too_large",
            "instance": scope["path"],
            "errors": [],
        }
        body = json.dumps(problem).encode()
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
