"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SettingsDep
from service.db import get_engine
from service.queue import check_broker

router = APIRouter(tags=["health"])


@router.get("/livez")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
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
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )
