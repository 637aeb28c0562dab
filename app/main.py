"""The FastAPI application."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from app.api import paths
from app.api.deps import require_api_key
from app.api.routes import datasets, health, jobs, models, report, webhooks
from app.body_limit import BodyLimitMiddleware
from app.console import router as console_router
from app.errors import install_error_handlers, problem_responses
from app.observability.setup import install_observability
from app.public_urls import PublicBaseUrlMiddleware
from service.schema import prepare_schema
from service.settings import Settings, get_settings

DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files (the fastapi-offline package ships them)


def operation_id(route: APIRoute) -> str:
    """Routes without an explicit operation_id are named after their function (`get_report`, `livez`)."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        prepare_schema(settings)  # migrates the embedded database; refuses a DATABASE_URL that is behind
        yield

    # FastAPIOffline: /docs (Swagger UI) and /redoc with their scripts and styles served by this app, no CDN
    app = FastAPIOffline(
        docs_url="/docs",
        redoc_url="/redoc",
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the public validator
        title="onnx-compress",
        version="0.1.0",
        description="Upload an ONNX model and a compression spec; poll the job; download the compressed model "
        "with metrics proving size, latency and accuracy gained and lost.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    install_error_handlers(app, [settings.data_dir, settings.resolved_artifacts_dir, settings.work_dir])
    uploads = frozenset({paths.MODELS, paths.DATASETS})  # multipart: their own limits while streaming to disk
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_json_body_bytes, exempt_posts=uploads)
    app.add_middleware(PublicBaseUrlMiddleware, public_base_url=settings.public_base_url)  # absolute `urls`
    install_observability(app, settings)  # outermost: request ids, access log, HTTP metrics; GET /metrics
    app.include_router(health.router)
    app.include_router(console_router)  # the web console at / (static; its API calls carry the key)
    authed = [Depends(require_api_key)]
    for router in (models.router, datasets.router, jobs.router, webhooks.router, report.router):
        app.include_router(router, dependencies=authed, responses=problem_responses(401))
    app.include_router(jobs.status_router)  # GET /v1/jobs/{id}: authenticates within its own read (one thread hop)
    return app
