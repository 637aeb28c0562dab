"""Job state transitions, each a compare-and-set in the database so redelivered tasks never run a job twice.

`queued -> running` claims the job with a new attempt number; every later write names that attempt,
so a worker that lost its lease (crashed, partitioned, killed) can no longer change the job.
Recovery sweeps take a job for redelivery by compare-and-set on `enqueued_at`, so however many workers sweep,
one of them queues it again (at most once per sweep period) and records why.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from service import webhooks
from service.orm import Job, JobEvent, utcnow
from service.status import TERMINAL, EventKind, JobStatus


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # this worker runs the job now, under a new attempt number
    FINISHED = "finished"  # it already ended
    CANCELED = "canceled"  # it was canceled before it started
    BUSY = "busy"  # another attempt holds a live lease
    MISSING = "missing"


class CancelOutcome(StrEnum):
    CANCELED = "canceled"  # it was queued: ended at once, never runs
    REQUESTED = "requested"  # it is running: flagged, stops at its next check
    FINISHED = "finished"  # it already ended: nothing to cancel
    MISSING = "missing"


def add_event(
    session: Session,
    job_id: str,
    kind: EventKind,
    message: str,
    *,
    attempt: int = 0,
    progress: float | None = None,
    stage: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(job_id=job_id, attempt=attempt, kind=kind, message=message, progress=progress, stage=stage, data=data)
    )


def claim(session: Session, job_id: str, worker: str, lease: timedelta) -> tuple[ClaimOutcome, int]:
    """Try to start the job: returns (outcome, attempt).

    A running job whose heartbeat is older than the lease belongs to a dead worker and is taken over.
    """
    job = session.get(Job, job_id)
    if job is None:
        return ClaimOutcome.MISSING, 0
    if job.status in TERMINAL:
        return (ClaimOutcome.CANCELED if job.status == JobStatus.CANCELED else ClaimOutcome.FINISHED), job.attempt
    previous_attempt, previous_status = job.attempt, job.status  # the UPDATE below refreshes `job`
    now = utcnow()
    stale_before = now - lease
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.attempt == previous_attempt,
            or_(
                Job.status == JobStatus.QUEUED,
                (Job.status == JobStatus.RUNNING) & (Job.heartbeat_at < stale_before),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            attempt=previous_attempt + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=job.started_at or now,
        )
    )
    if result.rowcount != 1:
        session.rollback()
        return ClaimOutcome.BUSY, previous_attempt
    attempt = previous_attempt + 1
    takeover = previous_status == JobStatus.RUNNING
    add_event(
        session,
        job_id,
        EventKind.STARTED,
        f"attempt {attempt} started on {worker}" + (" (took over from a worker that stopped)" if takeover else ""),
        attempt=attempt,
    )
    webhooks.record_event(session, job_id, JobStatus.RUNNING)
    session.commit()
    return ClaimOutcome.CLAIMED, attempt


def _owned(job_id: str, attempt: int) -> ColumnElement[bool]:
    return (Job.id == job_id) & (Job.attempt == attempt) & (Job.status == JobStatus.RUNNING)


def heartbeat(session: Session, job_id: str, attempt: int) -> bool:
    """Renew the lease; False means another attempt owns the job now."""
    result = session.execute(update(Job).where(_owned(job_id, attempt)).values(heartbeat_at=utcnow()))
    session.commit()
    return result.rowcount == 1


def update_progress(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    progress: float | None = None,
    stage: str | None = None,
    steps: list[Any] | None = None,
    event: tuple[EventKind, str, dict[str, Any] | None] | None = None,
) -> bool:
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    if stage is not None:
        values["stage"] = stage
    if steps is not None:
        values["steps"] = steps
    result = session.execute(update(Job).where(_owned(job_id, attempt)).values(**values))
    if result.rowcount == 1 and event is not None:
        kind, message, data = event
        add_event(session, job_id, kind, message, attempt=attempt, progress=progress, stage=stage, data=data)
    session.commit()
    return result.rowcount == 1


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    status: JobStatus,
    *,
    metrics: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
    steps: list[Any] | None = None,
) -> bool:
    """End the job once: only the attempt that owns it may, and only from `running`."""
    if not status.terminal:
        raise ValueError(f"a job finishes succeeded, failed or canceled, not {status}")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "heartbeat_at": None}
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
        values["stage"] = "done"
    if metrics is not None:
        values["metrics"] = metrics
    if steps is not None:
        values["steps"] = steps
    if error is not None:
        values["error_code"], values["error_message"] = error
    result = session.execute(update(Job).where(_owned(job_id, attempt)).values(**values))
    if result.rowcount == 1:
        message = f"job {status}" + (f": {error[1]}" if error else "")
        add_event(session, job_id, EventKind(status.value), message, attempt=attempt, progress=values.get("progress"))
        webhooks.record_event(session, job_id, status)
    session.commit()
    return result.rowcount == 1


def fail_without_claim(session: Session, job_id: str, code: str, message: str) -> bool:
    """Fail a job that is not running under a live attempt (attempts exhausted, or it could not be queued)."""
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL:
        return False
    attempt, current = job.attempt, job.status
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == current)
        .values(
            status=JobStatus.FAILED, finished_at=utcnow(), error_code=code, error_message=message, heartbeat_at=None
        )
    )
    if result.rowcount == 1:
        add_event(session, job_id, EventKind.FAILED, f"job failed: {message}", attempt=attempt)
        webhooks.record_event(session, job_id, JobStatus.FAILED)
    session.commit()
    return result.rowcount == 1


def request_cancel(session: Session, job_id: str) -> CancelOutcome:
    """Cancel: a queued job ends at once and never runs; a running one is flagged and stops at its next check."""
    job = session.get(Job, job_id)
    if job is None:
        return CancelOutcome.MISSING
    if job.status in TERMINAL:
        return CancelOutcome.FINISHED
    if job.status == JobStatus.QUEUED:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELED, finished_at=utcnow(), cancel_requested=True)
        )
        if result.rowcount == 1:
            add_event(session, job_id, EventKind.CANCELED, "canceled before it started")
            webhooks.record_event(session, job_id, JobStatus.CANCELED)
            session.commit()
            return CancelOutcome.CANCELED
        session.rollback()
        return request_cancel(session, job_id)  # it started meanwhile: flag the running job instead
    session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    add_event(session, job_id, EventKind.CANCEL_REQUESTED, "cancel requested; the job stops at its next check")
    session.commit()
    return CancelOutcome.REQUESTED


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """True once a cancel was requested, or the job was deleted (DELETE /v1/jobs/{id}, retention)."""
    requested = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return requested is None or bool(requested)


def _enqueued_before(cutoff: datetime) -> ColumnElement[bool]:
    return func.coalesce(Job.enqueued_at, Job.created_at) < cutoff


def take_stale_running(session: Session, lease: timedelta) -> list[str]:
    """Take running jobs whose worker stopped renewing its lease, for requeueing; each job is taken by one
    sweeper per lease (compare-and-set on `enqueued_at`), with a `requeued` event."""
    now = utcnow()
    stale_before = now - lease
    taken = []
    for job_id, attempt in session.execute(
        select(Job.id, Job.attempt).where(
            Job.status == JobStatus.RUNNING, Job.heartbeat_at < stale_before, _enqueued_before(stale_before)
        )
    ).all():
        result = session.execute(
            update(Job)
            .where(
                _owned(job_id, attempt),
                Job.heartbeat_at < stale_before,
                _enqueued_before(stale_before),
            )
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            message = f"the worker running attempt {attempt} stopped renewing its lease; job requeued"
            add_event(session, job_id, EventKind.REQUEUED, message, attempt=attempt)
            taken.append(job_id)
    session.commit()
    return taken


def queued_jobs(session: Session, enqueued_before: datetime | None = None) -> list[str]:
    """Queued jobs (oldest first), only those last queued before `enqueued_before` if given."""
    query = select(Job.id).where(Job.status == JobStatus.QUEUED)
    if enqueued_before is not None:
        query = query.where(_enqueued_before(enqueued_before))
    return list(session.scalars(query.order_by(Job.created_at, Job.id)))


def mark_unpublished(session: Session, job_id: str, why: str | None = None) -> bool:
    """The job's message could not be published (the broker did not answer): `enqueued_at` becomes NULL, which
    the recovery sweeps read as "no message exists", so the next sweep that reaches the broker publishes it.
    With `why`, an `info` event says so. Returns False when the job is no longer queued or running."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1 and why:
        add_event(session, job_id, EventKind.INFO, why)
    session.commit()
    return result.rowcount == 1


def take_unpublished(session: Session, reason: str) -> list[str]:
    """Take the queued jobs that have no message at all (`mark_unpublished`), oldest first, for publishing; each
    job is taken by one sweeper (compare-and-set on `enqueued_at IS NULL`), with a `requeued` event."""
    now = utcnow()
    query = select(Job.id).where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))
    taken = []
    for job_id in session.scalars(query.order_by(Job.created_at, Job.id)).all():
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            add_event(session, job_id, EventKind.REQUEUED, reason)
            taken.append(job_id)
    session.commit()
    return taken


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)) or 0


def take_undelivered(session: Session, job_ids: list[str], enqueued_before: datetime, reason: str) -> list[str]:
    """Take queued jobs whose message was lost, for queueing again; each job is taken by one sweeper
    (compare-and-set on `enqueued_at`), with a `requeued` event giving `reason`."""
    now = utcnow()
    taken = []
    for job_id in job_ids:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED, _enqueued_before(enqueued_before))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            add_event(session, job_id, EventKind.REQUEUED, reason)
            taken.append(job_id)
    session.commit()
    return taken
