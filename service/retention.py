"""Retention: finished jobs and uploads older than their retention are deleted by a periodic sweep.

- A job that ended (succeeded, failed, canceled) more than JOB_RETENTION_DAYS ago is purged with its artifacts,
  events and work files.
- An uploaded model or dataset created more than UPLOAD_RETENTION_DAYS ago is deleted, unless a queued or running
  job needs it (then a later sweep deletes it). Finished jobs may keep naming it.
- Work folders of jobs that no longer exist or have ended (a worker killed before cleaning up) are removed, and
  so are stored artifacts of jobs that no longer exist (a worker that stored its results just as its job was
  deleted).

0 keeps forever. The workers' recovery watcher calls `sweep_if_due` on every pass (workers/recovery.py); it runs
at most every RETENTION_SWEEP_SECONDS per process and deletes at most RETENTION_BATCH jobs and uploads a sweep.
Any number of workers may sweep at once: a delete of something already gone is a no-op.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import threading
import time
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import func, select

from service.artifacts import get_store, job_artifact_prefix
from service.db import session_scope
from service.lifecycle import active_jobs, delete_upload, purge_job, uploads_in_use
from service.orm import DatasetRecord, Job, ModelRecord, utcnow
from service.settings import Settings
from service.status import TERMINAL

log = logging.getLogger(__name__)

JOB_FOLDER = re.compile(r"[A-Za-z0-9_-]{1,64}")
JOBS_FOLDER = job_artifact_prefix("").rstrip("/")  # "jobs"
LOOKUP_CHUNK = 500  # artifact folders looked up in the database at once


class RetentionReport(BaseModel):
    """What one sweep deleted (ids)."""

    jobs: list[str] = []
    models: list[str] = []
    datasets: list[str] = []
    work_folders: list[str] = []
    orphan_artifacts: list[str] = []


def _cutoff(now: datetime, days: float) -> datetime | None:
    return None if days <= 0 else now - timedelta(days=days)


def expired_jobs(settings: Settings, now: datetime) -> list[str]:
    cutoff = _cutoff(now, settings.job_retention_days)
    if cutoff is None:
        return []
    ended = func.coalesce(Job.finished_at, Job.created_at)
    query = select(Job.id).where(Job.status.in_(TERMINAL), ended < cutoff).order_by(ended, Job.id)
    with session_scope(settings) as session:
        return list(session.scalars(query.limit(settings.retention_batch)))


def _sweep_jobs(settings: Settings, now: datetime) -> list[str]:
    store, deleted = get_store(settings), []
    for job_id in expired_jobs(settings, now):
        with session_scope(settings) as session:
            if purge_job(session, store, settings, job_id):
                deleted.append(job_id)
    return deleted


def _sweep_uploads(settings: Settings, now: datetime, kind: type[ModelRecord] | type[DatasetRecord]) -> list[str]:
    cutoff = _cutoff(now, settings.upload_retention_days)
    if cutoff is None:
        return []
    store, deleted = get_store(settings), []
    with session_scope(settings) as session:
        query = select(kind).where(kind.created_at < cutoff).order_by(kind.created_at, kind.id)
        candidates = list(session.scalars(query.limit(settings.retention_batch)))
        if not candidates:
            return []
        used = uploads_in_use(active_jobs(session))
        for record in candidates:
            if record.id in used:
                continue
            delete_upload(session, store, record)
            deleted.append(record.id)
    return deleted


def _sweep_work_folders(settings: Settings) -> list[str]:
    """Work folders whose job is gone or has ended (its worker died before removing them)."""
    root = settings.work_dir
    if not root.is_dir():
        return []
    names = [path.name for path in root.iterdir() if path.is_dir() and JOB_FOLDER.fullmatch(path.name)]
    if not names:
        return []
    with session_scope(settings) as session:
        live = set(session.scalars(select(Job.id).where(Job.id.in_(names), Job.status.not_in(TERMINAL))))
    removed = [name for name in names if name not in live]
    for name in removed:
        shutil.rmtree(root / name, ignore_errors=True)
    return removed


def _sweep_orphan_artifacts(settings: Settings) -> list[str]:
    """Artifact folders (`jobs/<id>/`) whose job row is gone: a job is stored only after its row exists, so these
    are leftovers of deleted jobs. At most RETENTION_BATCH per sweep."""
    store, removed = get_store(settings), []
    folders = store.list_folders(JOBS_FOLDER)
    while len(removed) < settings.retention_batch:
        chunk = [name for name in itertools.islice(folders, LOOKUP_CHUNK) if JOB_FOLDER.fullmatch(name)]
        if not chunk:
            break
        with session_scope(settings) as session:
            known = set(session.scalars(select(Job.id).where(Job.id.in_(chunk))))
        for name in chunk:
            if name not in known and len(removed) < settings.retention_batch:
                store.delete_prefix(job_artifact_prefix(name))
                removed.append(name)
    return removed


def sweep(settings: Settings, now: datetime | None = None) -> RetentionReport:
    """One retention sweep (jobs first, so uploads only they named become free in the same pass)."""
    now = now or utcnow()
    report = RetentionReport(jobs=_sweep_jobs(settings, now))
    report.models = _sweep_uploads(settings, now, ModelRecord)
    report.datasets = _sweep_uploads(settings, now, DatasetRecord)
    report.work_folders = _sweep_work_folders(settings)
    report.orphan_artifacts = _sweep_orphan_artifacts(settings)
    if report.jobs or report.models or report.datasets or report.orphan_artifacts:
        log.info(
            "retention: deleted %d jobs, %d models, %d datasets, artifacts of %d deleted jobs",
            len(report.jobs),
            len(report.models),
            len(report.datasets),
            len(report.orphan_artifacts),
        )
    return report


_lock = threading.Lock()
_last_run: float | None = None


def sweep_if_due(settings: Settings) -> RetentionReport | None:
    """`sweep` when RETENTION_SWEEP_SECONDS passed since this process's last one; never raises (logs instead)."""
    global _last_run
    with _lock:
        now = time.monotonic()
        if _last_run is not None and now - _last_run < settings.retention_sweep_seconds:
            return None
        _last_run = now
    try:
        return sweep(settings)
    except Exception:
        log.exception("retention sweep failed; retrying in RETENTION_SWEEP_SECONDS")
        return None
