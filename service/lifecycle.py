"""Deleting jobs and uploads: their rows, their stored files and their work files; and which active jobs use an
upload (a model or dataset a queued or running job needs is never deleted).

Files go first, rows last: a delete that fails half-way (the bucket did not answer) leaves the row, so the same
delete can be retried and nothing is left that no row names.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from enum import StrEnum

from sqlalchemy import ColumnElement, Table, delete, select
from sqlalchemy.orm import Session

from service import job_store
from service.artifacts import ArtifactStore, job_artifact_prefix
from service.job_store import CancelOutcome
from service.orm import Base, DatasetRecord, Job, ModelRecord
from service.settings import Settings
from service.status import JobStatus

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
STOP_POLL_S = 0.2  # how often a delete re-reads a running job it asked to stop


class UploadKind(StrEnum):
    MODEL = "model"
    DATASET = "dataset"


Upload = ModelRecord | DatasetRecord


def upload_kind(record: Upload) -> UploadKind:
    return UploadKind.MODEL if isinstance(record, ModelRecord) else UploadKind.DATASET


def _uses(job: Job, kind: UploadKind, upload_id: str) -> bool:
    """Whether the job needs the upload: its model, a distill step's `student`, or one of its datasets."""
    if kind == UploadKind.DATASET:
        return upload_id in (job.datasets or {}).values()
    if job.model_id == upload_id:
        return True
    return any((step.get("config") or {}).get("student") == upload_id for step in job.steps or [])


def active_jobs(session: Session) -> list[Job]:
    """Queued and running jobs (the few a delete or a retention sweep must not pull an upload from)."""
    return list(session.scalars(select(Job).where(Job.status.in_(ACTIVE)).order_by(Job.created_at, Job.id)))


def jobs_using(session: Session, kind: UploadKind, upload_id: str) -> list[Job]:
    """The queued or running jobs that need this upload, oldest first."""
    return [job for job in active_jobs(session) if _uses(job, kind, upload_id)]


def uploads_in_use(jobs: Iterable[Job]) -> set[str]:
    """Every model and dataset id the given jobs need."""
    used: set[str] = set()
    for job in jobs:
        used.add(job.model_id)
        used.update(value for value in (job.datasets or {}).values() if value)
        used.update((step.get("config") or {}).get("student") or "" for step in job.steps or [])
    used.discard("")
    used.discard("current")
    return used


def hold_uploads(session: Session, model_ids: Iterable[str], dataset_ids: Iterable[str]) -> None:
    """Share-lock the uploads a job being created names, until it commits: a delete of one of them either committed
    first (the new job then finds it gone: 422) or waits and then sees the job (409). Never a job whose model was
    deleted under it. (SQLite has no row locks; its writers take turns.)"""
    for kind, wanted in ((ModelRecord, model_ids), (DatasetRecord, dataset_ids)):
        ids = sorted({upload_id for upload_id in wanted if upload_id})
        if ids:
            session.execute(select(kind.id).where(kind.id.in_(ids)).with_for_update(read=True))


def lock_for_delete(session: Session, record: Upload) -> None:
    """Lock the upload's row before checking which jobs use it (see `hold_uploads`)."""
    kind = type(record)
    session.execute(select(kind.id).where(kind.id == record.id).with_for_update())


def _delete_with_dependents(session: Session, table: Table, where: ColumnElement[bool]) -> None:
    """Delete the rows of `table` that `where` keeps, after every row naming them by a foreign key (events,
    webhook deliveries and their attempts, whatever records per-job rows), however deep."""
    for child in Base.metadata.sorted_tables:
        for key in child.foreign_keys:
            if key.column.table is table:
                named = key.parent.in_(select(key.column).where(where))
                _delete_with_dependents(session, child, named)
    session.execute(delete(table).where(where))


def purge_job(session: Session, store: ArtifactStore, settings: Settings, job_id: str) -> bool:
    """Remove a job for good: its artifacts, its work folder (when this process can see it), every row naming it
    and the job row. False when there was no such job. The caller makes sure it is not running any more."""
    store.delete_prefix(job_artifact_prefix(job_id))
    shutil.rmtree(settings.work_dir / job_id, ignore_errors=True)
    # lock the job row first: a worker's progress write (an UPDATE of the job, then an event) either finished
    # before this, and its event is deleted below, or waits and then finds no job to write to
    if session.scalar(select(Job.id).where(Job.id == job_id).with_for_update()) is None:
        session.rollback()
        return False
    _delete_with_dependents(session, Job.__table__, Job.__table__.c.id == job_id)
    session.commit()
    return True


def _status(session: Session, job_id: str) -> JobStatus | None:
    session.rollback()  # end the read transaction so the next read sees the worker's commits
    return session.scalar(select(Job.status).where(Job.id == job_id))


def delete_job(session: Session, store: ArtifactStore, settings: Settings, job_id: str) -> bool:
    """Delete a job: a queued one is canceled (it never runs), a running one is asked to stop and given
    DELETE_WAIT_SECONDS to do so, then the job is purged. A worker still running it afterwards finds its job gone:
    it stops at its next cancel check and writes nothing (see job_store.is_cancel_requested)."""
    outcome = job_store.request_cancel(session, job_id)
    if outcome == CancelOutcome.MISSING:
        return False
    if outcome == CancelOutcome.REQUESTED:
        deadline = time.monotonic() + settings.delete_wait_seconds
        while time.monotonic() < deadline:
            status = _status(session, job_id)
            if status is None or status.terminal:
                break
            time.sleep(STOP_POLL_S)
    return purge_job(session, store, settings, job_id)


def delete_upload(session: Session, store: ArtifactStore, record: Upload) -> None:
    """Remove an uploaded model or dataset: its stored file, then its row. Finished jobs keep naming it (their
    report says the record is gone); the caller checked that no queued or running job needs it."""
    store.delete(record.storage_key)
    session.delete(record)
    session.commit()
