"""Wires observability into an app: the middleware, the registry and its collectors, the `/metrics` route."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from app.observability.metrics_route import metrics_router
from app.observability.middleware import HttpMetrics, ObservabilityMiddleware
from service.metrics import JobStoreCollector
from service.settings import Settings


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Request ids and access logs always; metrics and `/metrics` unless METRICS_ENABLED is false. A registry of
    the app's own (not prometheus_client's global one), so apps made in one process never share series."""
    metrics = None
    if settings.metrics_enabled:
        registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        registry.register(JobStoreCollector(settings))
        metrics = HttpMetrics(registry)
        app.state.metrics_registry = registry
        app.include_router(metrics_router(registry, settings.metrics_token))
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
