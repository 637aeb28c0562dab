"""Recovery sweeps, from a thread in every worker's main process: jobs whose worker died, and jobs whose message
the broker lost, are queued again.

- Running jobs whose lease expired (`JOB_LEASE_SECONDS` without a heartbeat: the worker was killed, crashed or lost
  its machine). Redis redelivers an unacked message only after the visibility timeout (above the hard time limit),
  and the embedded SQLite broker does not redeliver at all, so crash recovery cannot wait for the broker.
- Queued jobs whose message is gone (Redis restarted without persistence, or the API stopped between committing
  the job and publishing it): a job still queued `QUEUED_REDELIVER_SECONDS` after it was last queued is queued
  again when the broker's queue holds fewer messages than there are queued jobs, so at least one queued job has no
  message. A long backlog (as many messages as queued jobs, or more) is left alone: no duplicate piles up behind it.

- Queued jobs never published (the broker did not answer at submission: the API keeps the job queued, answers 202
  and leaves `enqueued_at` NULL, an outbox row): published by the first sweep that reaches the broker again.

A message that cannot be published (the broker is down) leaves its job marked unpublished, for the next sweep.
Each sweep takes a job by compare-and-set (one sweeper per job and period, with a `requeued` event), and the
compare-and-set claim runs a job once however many messages name it.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from service import job_store, retention
from service.db import forget_inherited_connections, session_scope
from service.orm import utcnow
from service.queue import BrokerUnavailableError, check_broker, enqueue_job, waiting_messages
from service.schema import prepare_schema
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)
_stop = threading.Event()

SWEEP_MIN_S, SWEEP_MAX_S = 1.0, 30.0
BROKER_TIMEOUT_S = 5.0


def sweep_interval(settings: Settings) -> float:
    """A quarter of the shorter wait, so a job is queued again within ~1.25 of its lease or redelivery time."""
    shortest = min(settings.job_lease_seconds, settings.queued_redeliver_seconds)
    return min(SWEEP_MAX_S, max(SWEEP_MIN_S, shortest / 4))


def publish_taken(settings: Settings, taken: list[str]) -> None:
    """Publish a message for each job taken by a sweep. When the broker does not answer, that job and the ones
    after it are marked unpublished (for the next sweep) and BrokerUnavailableError is raised."""
    for index, job_id in enumerate(taken):
        try:
            enqueue_job(settings, job_id)
        except BrokerUnavailableError:
            with session_scope(settings) as session:
                for unpublished in taken[index:]:
                    job_store.mark_unpublished(session, unpublished)
            raise


def requeue_stale_jobs(settings: Settings) -> list[str]:
    """Queue again the running jobs whose worker stopped renewing its lease."""
    with session_scope(settings) as session:
        taken = job_store.take_stale_running(session, timedelta(seconds=settings.job_lease_seconds))
    for job_id in taken:
        log.warning("job %s: its worker's lease expired; requeueing", job_id)
    publish_taken(settings, taken)
    return taken


def publish_unpublished(settings: Settings) -> list[str]:
    """Publish the queued jobs the API could not publish at submission (the outbox)."""
    with session_scope(settings) as session:
        taken = job_store.take_unpublished(
            session, "published by the workers' recovery sweep: the broker did not answer when it was submitted"
        )
    for job_id in taken:
        log.warning("job %s: never published (the broker was down at submission); publishing it", job_id)
    publish_taken(settings, taken)
    return taken


def pending_messages(settings: Settings) -> int:
    """Messages waiting in the job queue (delivered ones not counted)."""
    return waiting_messages(settings, timeout=BROKER_TIMEOUT_S)


def redeliver_lost_jobs(settings: Settings) -> list[str]:
    """Queue again the queued jobs that waited over QUEUED_REDELIVER_SECONDS while messages are missing."""
    cutoff = utcnow() - timedelta(seconds=settings.queued_redeliver_seconds)
    with session_scope(settings) as session:
        overdue = job_store.queued_jobs(session, enqueued_before=cutoff)
        if not overdue:
            return []
        queued = job_store.count_queued(session)
    pending = pending_messages(settings)
    if pending >= queued:
        return []  # every queued job may still have its message: a backlog, not a loss
    reason = (
        f"still queued after QUEUED_REDELIVER_SECONDS={settings.queued_redeliver_seconds} s while the broker "
        f"held {pending} messages for {queued} queued jobs (a broker restart, or the API stopped before queueing "
        "it, lost its message); queued again"
    )
    with session_scope(settings) as session:
        taken = job_store.take_undelivered(session, overdue, cutoff, reason)
    for job_id in taken:
        log.warning("job %s: queued but its message is missing; queueing it again", job_id)
    publish_taken(settings, taken)
    return taken


def broker_answers(settings: Settings) -> bool:
    """Sweeps that publish are skipped while the broker is down (they would take jobs they cannot queue)."""
    try:
        check_broker(settings, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:
        log.warning("recovery sweep: the broker does not answer (%s: %s); nothing requeued", type(exc).__name__, exc)
        return False
    return True


def sweep(settings: Settings) -> None:
    publishing = (requeue_stale_jobs, publish_unpublished, redeliver_lost_jobs) if broker_answers(settings) else ()
    for check in publishing:
        try:
            check(settings)
        except Exception:
            log.exception("recovery sweep %s failed; retrying next sweep", check.__name__)
    retention.sweep_if_due(settings)  # service/retention.py: at most every RETENTION_SWEEP_SECONDS; never raises


def _watch(settings: Settings) -> None:
    interval = sweep_interval(settings)
    while True:
        sweep(settings)
        if _stop.wait(interval):
            return


@worker_ready.connect
def _start_watch(**_: object) -> None:
    settings = get_settings()
    prepare_schema(settings)
    threading.Thread(target=_watch, args=(settings,), name="recovery-sweeps", daemon=True).start()


@worker_shutdown.connect
def _stop_watch(**_: object) -> None:
    _stop.set()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    forget_inherited_connections()
