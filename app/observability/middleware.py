"""One pure ASGI middleware per request: its id, its metrics and its access log line.

- The request id is the caller's `X-Request-ID` when it is a sane token (else a new one); it is set in the logging
  context (`service.logging`), so every line logged while the request is handled carries it, and echoed in the
  response's `X-Request-ID` header.
- `onnx_compress_http_requests_total{method,route,status}` and `onnx_compress_http_request_duration_seconds
  {method,route}` are labelled by the route's template (`/v1/jobs/{job_id}`), never the raw path, so ids do not
  multiply series; a path no route matches is `unmatched`.
- One `request` log line per request with method, path, route, status and duration.

Kept cheap: no Request object, label children cached, one dictionary lookup per request on the hot path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import REQUEST_ID_HEADER, accepted_request_id, request_id_var

log = logging.getLogger("app.access")

_HEADER = REQUEST_ID_HEADER.lower().encode()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "unmatched"


class HttpMetrics:
    """The request counter and latency histogram, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "onnx_compress_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "onnx_compress_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte, by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = self._counters[(method, route, status)] = self.requests.labels(method, route, str(status))
        counter.inc()
        histogram = self._histograms.get((method, route))
        if histogram is None:
            histogram = self._histograms[(method, route)] = self.latency.labels(method, route)
        histogram.observe(seconds)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                given = value.decode("latin-1")
                break
        request_id = accepted_request_id(given)
        echoed = (_HEADER, request_id.encode("latin-1"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), echoed]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, status, seconds)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s %s %.1f ms",
                    scope["method"],
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )
            request_id_var.reset(token)
