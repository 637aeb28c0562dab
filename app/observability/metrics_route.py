"""`GET /metrics`: Prometheus text exposition of the app's registry (HTTP metrics, the job store collector, process).

Counts only: no tenant, model or job id appears in any label. `METRICS_ENABLED=false` removes the route;
`METRICS_TOKEN` requires `Authorization: Bearer <token>` (401 otherwise).
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.errors import ApiError


def metrics_router(registry: CollectorRegistry, token: str | None) -> APIRouter:
    router = APIRouter(tags=["observability"])

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if token:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ApiError(
                    status.HTTP_401_UNAUTHORIZED,
                    "unauthorized",
                    "metrics need 'Authorization: Bearer <METRICS_TOKEN>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
