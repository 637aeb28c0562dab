"""Turns job rows into API resources and pages through them."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from sqlalchemy import Select, and_, or_, select

from app.api.paths import job_path
from app.schemas import JobDatasets, JobError, JobEventOut, JobOut, StepStatus
from service.orm import Job, JobEvent
from service.status import JobStatus


def job_urls(job: Job) -> dict[str, str]:
    base = job_path(job.id)
    urls = {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}
    if job.status == JobStatus.SUCCEEDED:
        urls["model"] = f"{base}/artifacts/model.onnx"
        urls["metrics"] = f"{base}/artifacts/metrics.json"
    return urls


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
        steps=[StepStatus(**step) for step in job.steps],
        metrics=job.metrics,
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
    return datetime.fromisoformat(created), str(job_id)


def page_query(status: JobStatus | None, cursor: str | None, limit: int) -> Select[tuple[Job]]:
    """Newest first; the cursor is the last row's (created_at, id), stable under concurrent inserts."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status:
        query = query.where(Job.status == status)
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    return query
