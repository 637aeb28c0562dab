"""Celery tasks: thin wrappers around the job runner."""

from __future__ import annotations

import logging

from celery import Task

from service.queue import RUN_JOB, job_queue
from service.settings import get_settings
from workers.celery_app import app
from workers.job_runner import Outcome
from workers.job_runner import run_job as run_job_now

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, bind=True, max_retries=None)
def run_job(self: Task, job_id: str) -> str:
    """Run a job unless another live attempt owns it; then check back once its lease could expire."""
    settings = get_settings()
    outcome = run_job_now(job_id, settings)
    if outcome == Outcome.BUSY:
        log.info("job %s is running elsewhere; checking again in %s s", job_id, settings.job_lease_seconds)
        # the queue named explicitly: the embedded SQLite broker drops a retry routed by exchange name alone
        raise self.retry(countdown=settings.job_lease_seconds, queue=job_queue(settings))
    return outcome
