"""Celery tasks: thin wrappers around the job runner."""

from __future__ import annotations

import logging

from celery import Task

from app.core.config import get_settings
from workers.celery_app import RUN_JOB, app
from workers.job_runner import run_job as run_job_now

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, bind=True, max_retries=None)
def run_job(self: Task, job_id: str) -> str:
    """Run a job unless another live attempt owns it; then check back once its lease could expire."""
    settings = get_settings()
    outcome = run_job_now(job_id, settings)
    if outcome == "busy":
        log.info("job %s is running elsewhere; checking again in %s s", job_id, settings.job_lease_seconds)
        raise self.retry(countdown=settings.job_lease_seconds)
    return outcome
