"""Turns job rows into API resources and pages through them."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, and_, or_, select

from app.api.paths import job_path
from app.public_urls import absolute_url
from app.schemas import (
    RESOURCE_ID,
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


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    padded = cursor + "=" * (-len(cursor) % 4)
    created, job_id = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(job_id, str) or not re.fullmatch(RESOURCE_ID, job_id):
        raise ValueError("not a cursor this API made")
    return datetime.fromisoformat(created), job_id


def page_query(status: JobStatus | None, cursor: str | None, limit: int) -> Select[tuple[Job]]:
    """Newest first; the cursor is the last row's (created_at, id), stable under concurrent inserts."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status:
        query = query.where(Job.status == status)
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    return query
