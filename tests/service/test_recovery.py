"""Crash recovery in the job store and the workers' sweeps, in process: timestamps, takeover, redelivery, heartbeat.

(The same against real killed workers and a restarted Redis: test_recovery_stacks.py.)
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from service import job_store
from service.db import get_engine, session_scope
from service.job_store import ClaimOutcome
from service.orm import Job, JobEvent, ModelRecord, utcnow
from service.queue import BrokerUnavailableError, broker_connection, enqueue_job
from service.schema import migrate
from service.settings import Settings
from service.status import EventKind, JobStatus
from tests.service.stack import REDIS_URL, drop_postgres_schema, postgres_schema, production_env
from workers import recovery
from workers.progress import Heartbeat, JobProgressSink

LEASE = timedelta(seconds=60)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The embedded backend: SQLite job store and SQLite broker in a fresh DATA_DIR."""
    settings = Settings(data_dir=tmp_path / "data", queue_name=f"q_{uuid.uuid4().hex[:8]}")
    migrate(settings)
    return settings


def add_job(settings: Settings, **values: object) -> str:
    with session_scope(settings) as session:
        model = ModelRecord(filename="m.onnx", sha256="0" * 64, size_bytes=1, info={}, storage_key="models/m")
        session.add(model)
        session.flush()
        job = Job(model_id=model.id, spec={"steps": []}, datasets={}, steps=[], **values)
        session.add(job)
        session.flush()
        return job.id


def age(settings: Settings, job_id: str, **columns: timedelta) -> None:
    """Move the job's timestamps into the past, as if time had passed."""
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        for column, delta in columns.items():
            setattr(job, column, getattr(job, column) - delta)


def events(settings: Settings, job_id: str, kind: EventKind) -> list[JobEvent]:
    with session_scope(settings) as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
        return list(session.scalars(query))


def test_timestamps_are_aware_utc_on_sqlite(settings: Settings) -> None:
    job_id = add_job(settings)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expire_all()
        job = session.get(Job, job_id)
        assert job is not None and job.created_at.utcoffset() == timedelta(0)
        assert abs(job.created_at - utcnow()) < timedelta(minutes=5)
    with pytest.raises(Exception, match="naive datetime"), session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=datetime(2030, 1, 1)))


def test_claim_takes_over_a_dead_workers_job_on_sqlite(settings: Settings) -> None:
    """Finding 1: on SQLite the takeover raised `can't compare offset-naive and offset-aware datetimes`."""
    job_id = add_job(settings)
    with session_scope(settings) as session:
        assert job_store.claim(session, job_id, "dead-worker", LEASE) == (ClaimOutcome.CLAIMED, 1)
    with session_scope(settings) as session:  # a live lease: nobody else may run it
        assert job_store.claim(session, job_id, "other", LEASE) == (ClaimOutcome.BUSY, 1)
    age(settings, job_id, heartbeat_at=timedelta(minutes=5))
    with session_scope(settings) as session:
        session.get(Job, job_id)  # the job is in the session, as in the worker (the ORM evaluates the WHERE on it)
        assert job_store.claim(session, job_id, "rescuer", LEASE) == (ClaimOutcome.CLAIMED, 2)
    with session_scope(settings) as session:
        assert not job_store.heartbeat(session, job_id, 1)  # the dead attempt is fenced off
        assert job_store.finish(session, job_id, 2, JobStatus.SUCCEEDED)
        assert not job_store.finish(session, job_id, 1, JobStatus.SUCCEEDED)
    assert len(events(settings, job_id, EventKind.SUCCEEDED)) == 1


def test_a_stale_job_is_requeued_by_one_sweeper_per_lease(settings: Settings) -> None:
    job_id = add_job(settings)
    with session_scope(settings) as session:
        job_store.claim(session, job_id, "dead-worker", LEASE)
    with session_scope(settings) as session:
        assert job_store.take_stale_running(session, LEASE) == []  # its lease is live
    age(settings, job_id, heartbeat_at=timedelta(minutes=5), enqueued_at=timedelta(minutes=5))
    with session_scope(settings) as first, session_scope(settings) as second:
        assert job_store.take_stale_running(first, LEASE) == [job_id]
        assert job_store.take_stale_running(second, LEASE) == []  # another worker's sweep, same moment
    (event,) = events(settings, job_id, EventKind.REQUEUED)
    assert event.attempt == 1 and "lease" in event.message


def test_a_queued_job_is_taken_for_redelivery_once(settings: Settings) -> None:
    job_id = add_job(settings)
    cutoff = utcnow() - timedelta(seconds=30)
    with session_scope(settings) as session:
        assert job_store.queued_jobs(session, enqueued_before=cutoff) == []
    age(settings, job_id, enqueued_at=timedelta(minutes=1))
    with session_scope(settings) as first, session_scope(settings) as second:
        overdue = job_store.queued_jobs(first, enqueued_before=cutoff)
        assert overdue == [job_id]
        assert job_store.take_undelivered(first, overdue, cutoff, "lost") == [job_id]
        assert job_store.take_undelivered(second, overdue, cutoff, "lost") == []
    assert len(events(settings, job_id, EventKind.REQUEUED)) == 1


def purge(settings: Settings) -> int:
    with broker_connection(settings) as connection:
        return connection.default_channel.queue_purge(settings.queue_name) or 0


def test_sweep_requeues_a_job_whose_message_was_lost(settings: Settings) -> None:
    """Finding 2: a job committed but never published (the API died, or the broker restarted) is queued again."""
    settings = settings.model_copy(update={"queued_redeliver_seconds": 30})
    lost, fresh = add_job(settings), add_job(settings)
    enqueue_job(settings, fresh)  # `fresh` was published just now; `lost` never was
    age(settings, lost, enqueued_at=timedelta(minutes=1))
    assert recovery.pending_messages(settings) == 1
    assert recovery.redeliver_lost_jobs(settings) == [lost]
    assert recovery.pending_messages(settings) == 2
    assert recovery.redeliver_lost_jobs(settings) == []  # taken: not again within QUEUED_REDELIVER_SECONDS
    (event,) = events(settings, lost, EventKind.REQUEUED)
    assert "QUEUED_REDELIVER_SECONDS" in event.message


def test_sweep_leaves_a_backlog_alone(settings: Settings) -> None:
    """Jobs waiting behind others still have their messages: no duplicates pile up."""
    settings = settings.model_copy(update={"queued_redeliver_seconds": 30})
    waiting = [add_job(settings) for _ in range(3)]
    for job_id in waiting:
        enqueue_job(settings, job_id)
        age(settings, job_id, enqueued_at=timedelta(minutes=10))
    assert recovery.redeliver_lost_jobs(settings) == []
    assert recovery.pending_messages(settings) == 3
    assert purge(settings) == 3  # the broker restarted without them
    assert sorted(recovery.redeliver_lost_jobs(settings)) == sorted(waiting)
    assert recovery.pending_messages(settings) == 3


def enqueued_at(settings: Settings, job_id: str) -> datetime | None:
    with session_scope(settings) as session:
        return session.scalar(select(Job.enqueued_at).where(Job.id == job_id))


def test_a_job_the_broker_refused_is_published_by_the_first_sweep_that_reaches_it(settings: Settings) -> None:
    """The outbox: the API could not publish at submission (the job stays queued, `enqueued_at` NULL); a sweep
    while the broker is still down keeps it unpublished; the first sweep that reaches it publishes it, once."""
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})  # same job store, no broker
    job_id = add_job(settings)
    with session_scope(settings) as session:
        assert job_store.mark_unpublished(session, job_id, "the broker did not answer")
    assert enqueued_at(settings, job_id) is None
    recovery.sweep(down)
    assert enqueued_at(settings, job_id) is None and not events(settings, job_id, EventKind.REQUEUED)
    recovery.sweep(settings)
    assert recovery.publish_unpublished(settings) == []
    assert recovery.pending_messages(settings) == 1 and enqueued_at(settings, job_id) is not None
    assert len(events(settings, job_id, EventKind.REQUEUED)) == 1
    assert [event.message for event in events(settings, job_id, EventKind.INFO)] == ["the broker did not answer"]


def test_a_job_taken_while_the_broker_went_down_is_published_by_the_next_sweep(settings: Settings) -> None:
    """The broker stops between a sweep's check and its publish: the job is given back at once, not a lease later."""
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    job_id = add_job(settings)
    with session_scope(settings) as session:
        job_store.claim(session, job_id, "dead-worker", LEASE)
    age(settings, job_id, heartbeat_at=timedelta(minutes=5), enqueued_at=timedelta(minutes=5))
    age(settings, job_id, created_at=timedelta(minutes=5))
    with pytest.raises(BrokerUnavailableError):
        recovery.requeue_stale_jobs(down)
    assert enqueued_at(settings, job_id) is None
    assert recovery.requeue_stale_jobs(settings) == [job_id]
    assert recovery.pending_messages(settings) == 1


def test_sweep_interval_follows_the_shorter_wait() -> None:
    assert recovery.sweep_interval(Settings()) == 30  # defaults: lease 300 s, redelivery 120 s
    assert recovery.sweep_interval(Settings(job_lease_seconds=4, job_heartbeat_seconds=1)) == 1


def test_defaults_give_the_heartbeat_a_generous_lease() -> None:
    settings = Settings()
    assert settings.job_lease_seconds >= 300 and settings.job_lease_seconds / settings.job_heartbeat_seconds >= 20


def busy_python(seconds: float) -> int:
    """A pure-Python loop holding the GIL as much as the interpreter lets it."""
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        count += sum(i * i for i in range(1000))
    return count


def running_job(settings: Settings) -> tuple[str, int]:
    job_id = add_job(settings)
    with session_scope(settings) as session:
        outcome, attempt = job_store.claim(session, job_id, "worker", LEASE)
    assert outcome == ClaimOutcome.CLAIMED
    return job_id, attempt


def test_heartbeat_keeps_beating_while_the_job_thread_holds_the_gil(settings: Settings) -> None:
    settings = settings.model_copy(update={"job_heartbeat_seconds": 0.2})
    job_id, attempt = running_job(settings)
    sink = JobProgressSink(settings, job_id, attempt, [])
    with Heartbeat(settings, job_id, attempt, sink) as heartbeat:
        busy_python(3.0)
    assert heartbeat.beats >= 5 and heartbeat.longest_gap_s < 2.0, (heartbeat.beats, heartbeat.longest_gap_s)
    assert not sink.lease_lost.is_set()


def test_heartbeat_notices_a_lost_lease(settings: Settings) -> None:
    settings = settings.model_copy(update={"job_heartbeat_seconds": 0.1})
    job_id, attempt = running_job(settings)
    with session_scope(settings) as session:  # another worker took the job over
        session.execute(update(Job).where(Job.id == job_id).values(attempt=attempt + 1))
    sink = JobProgressSink(settings, job_id, attempt, [])
    with Heartbeat(settings, job_id, attempt, sink):
        assert sink.lease_lost.wait(10)


@pytest.mark.services
def test_heartbeat_is_not_held_up_by_the_jobs_connections(tmp_path: Path) -> None:
    """PostgreSQL: the job side holds every pooled connection (and a row lock on another job); beats go on."""
    schema = postgres_schema()
    try:
        settings = Settings(**{k.lower(): v for k, v in production_env(tmp_path / "data", schema).items()})
        settings = settings.model_copy(update={"job_heartbeat_seconds": 0.2})
        migrate(settings)
        job_id, attempt = running_job(settings)
        sink = JobProgressSink(settings, job_id, attempt, [])
        engine = get_engine(settings)
        held = [engine.connect() for _ in range(10)]  # pool_size 5 + max_overflow 5: the job side's whole pool
        try:
            for connection in held:
                connection.execute(text("SELECT 1"))
            with Heartbeat(settings, job_id, attempt, sink) as heartbeat:
                time.sleep(2.0)
        finally:
            for connection in held:
                connection.close()
        assert heartbeat.beats >= 4 and not sink.lease_lost.is_set()
    finally:
        drop_postgres_schema(schema)


@pytest.mark.services
def test_pending_messages_on_redis(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=REDIS_URL, queue_name=f"q_{uuid.uuid4().hex[:12]}")
    assert recovery.pending_messages(settings) == 0  # an empty Redis queue does not exist at all
    enqueue_job(settings, "job-1")
    enqueue_job(settings, "job-2")
    assert recovery.pending_messages(settings) == 2
    assert purge(settings) == 2
