"""The FastAPI application."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app.api.deps import require_api_key
from app.api.routes import datasets, health, jobs, models, report
from app.console import router as console_router
from service.schema import prepare_schema
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        prepare_schema(settings)  # migrates the embedded database; refuses a DATABASE_URL that is behind
        yield

    app = FastAPI(
        title="onnx-compress",
        version="0.1.0",
        description="Upload an ONNX model and a compression spec; poll the job; download the compressed model "
        "with metrics proving size, latency and accuracy gained and lost.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(console_router)  # the web console at / (static; its API calls carry the key)
    authed = [Depends(require_api_key)]
    for router in (models.router, datasets.router, jobs.router, report.router):
        app.include_router(router, dependencies=authed)
    return app
