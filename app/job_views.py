"""Turns job rows into API resources (lists page through them with app/pagination.py)."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.api.paths import job_path
from app.public_urls import absolute_url
from app.schemas import (
    JobDatasets,
    JobError,
    JobEventOut,
    JobMetricsOut,
    JobOut,
    JobUrls,
    StepMetricsOut,
    StepStatus,
)
from service.orm import Job, JobEvent
from service.status import JobStatus

T = TypeVar("T", bound=BaseModel)


log = logging.getLogger(__name__)


def job_urls(job: Job) -> JobUrls:
    base = absolute_url(job_path(job.id))  # absolute: PUBLIC_BASE_URL or the request's base (app/public_urls.py)
    urls = JobUrls(self=base, events=f"{base}/events", cancel=f"{base}/cancel")
    if job.status == JobStatus.SUCCEEDED:
        urls.model = f"{base}/artifacts/model.onnx"
        urls.metrics = f"{base}/artifacts/metrics.json"
    return urls


def _typed(model: type[T], value: dict[str, Any] | None, what: str) -> T | None:
    """Stored metrics as their typed model; a document that does not fit (written by an older version) is
    logged and left out rather than failing the whole response."""
    if value is None:
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        log.warning("stored %s do not fit %s: %s", what, model.__name__, exc.errors()[:3])
        return None


def step_status(step: dict[str, Any]) -> StepStatus:
    fields = {key: step.get(key) for key in ("index", "type", "config", "status")}
    return StepStatus(**fields, metrics=_typed(StepMetricsOut, step.get("metrics"), "step metrics"))


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        model_id=job.model_id,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        datasets=JobDatasets(**job.datasets),
        steps=[step_status(step) for step in job.steps],
        metrics=_typed(JobMetricsOut, job.metrics, "job metrics"),
        attempt=job.attempt,
        cancel_requested=job.cancel_requested,
        urls=job_urls(job),
    )


def event_out(event: JobEvent) -> JobEventOut:
    return JobEventOut.model_validate(event, from_attributes=True)
