"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.errors import problem_response, problem_responses
from service.db import get_engine
from service.queue import check_broker

router = APIRouter(tags=["health"])

READY_RETRY_AFTER_S = 5


@router.get("/livez")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Ready when the job store and the broker both answer; 503 says which one does not."""
    checks: dict[str, str] = {}
    try:
        with get_engine(settings).connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        check_broker(settings)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"down: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = "; ".join(f"{name} {value}" for name, value in checks.items() if value != "ok")
    # the one error shape (a Problem), with the checks as an extension member
    return problem_response(
        request,
        503,
        "not_ready",
        f"not ready: {down}",
        headers={"Retry-After": str(READY_RETRY_AFTER_S)},
        extensions={"checks": checks},
    )
