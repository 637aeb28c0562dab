"""Prometheus figures read from the job store and the broker when `/metrics` is scraped (counts only, no tenant).

The workers export nothing of their own: what they do is in the database already (every step's wall time in its
`step ... finished` event, every running job's lease renewal in `jobs.heartbeat_at` with the worker's name), so the
api reads it there. One scrape target covers every worker, however many there are and wherever they run, and a
worker that died shows as a stale heartbeat rather than a missing target.

- `onnx_compress_jobs{status}`: jobs by status (every status, 0 included).
- `onnx_compress_queue_messages{queue}`: messages waiting in the broker's job queue (absent when the broker does not
  answer; `onnx_compress_broker_up` says which).
- `onnx_compress_step_duration_seconds{step}`: histogram of finished steps' wall time by step type, accumulated
  from the step events (new events are read incrementally; the figures restart with the api process, like any
  Prometheus counter, and do not drop when retention deletes old jobs).
- `onnx_compress_worker_heartbeat_timestamp_seconds{worker}`: the newest lease renewal of each worker running a job;
  `onnx_compress_jobs_lease_expired`: running jobs whose heartbeat is older than JOB_LEASE_SECONDS.

Database and broker are read at most every METRICS_DB_CACHE_SECONDS; scrapes in between get the same figures.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import bindparam, func, select

from service.db import get_engine
from service.orm import Job, JobEvent, utcnow
from service.queue import waiting_messages
from service.settings import Settings
from service.status import EventKind, JobStatus

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
BROKER_TIMEOUT_S = 2.0
RESCAN_IDS = 1000  # step events are re-read this far below the newest id seen (ids can commit out of order)
_STEP_FINISHED = re.compile(r"^step \d+ \((?P<type>[\w-]+)\) finished")

_JOBS_BY_STATUS = select(Job.status, func.count()).group_by(Job.status)
_HEARTBEATS = (
    select(Job.worker, func.max(Job.heartbeat_at))
    .where(Job.status == JobStatus.RUNNING, Job.worker.is_not(None))
    .group_by(Job.worker)
)
_LEASE_EXPIRED = (
    select(func.count())
    .select_from(Job)
    .where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < bindparam("stale_before"))
)
_STEP_EVENTS = (
    select(JobEvent.id, JobEvent.message, JobEvent.data)
    .where(JobEvent.kind == EventKind.STEP, JobEvent.id > bindparam("floor"), JobEvent.data.is_not(None))
    .order_by(JobEvent.id)
)


@dataclass
class StepDurations:
    """Cumulative histogram of step wall times by step type, fed event by event (each event counted once)."""

    buckets: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    newest: int = 0

    def add(self, event_id: int, message: str, data: dict | None) -> None:
        if event_id in self.seen:
            return
        self.seen.add(event_id)
        self.newest = max(self.newest, event_id)
        match = _STEP_FINISHED.match(message or "")
        seconds = (data or {}).get("wall_time_s")
        step = (data or {}).get("type") or (match.group("type") if match else None)
        if step is None or not isinstance(seconds, int | float):
            return
        counts = self.buckets.setdefault(step, [0] * len(STEP_BUCKETS))
        for index, bound in enumerate(STEP_BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        self.sums[step] = self.sums.get(step, 0.0) + float(seconds)
        self.counts[step] = self.counts.get(step, 0) + 1

    @property
    def floor(self) -> int:
        return max(0, self.newest - RESCAN_IDS)

    def forget_below_floor(self) -> None:
        floor = self.floor
        self.seen = {event_id for event_id in self.seen if event_id > floor}


@dataclass
class Snapshot:
    jobs: dict[str, int]
    heartbeats: dict[str, float]
    lease_expired: int
    queue_messages: int | None
    database_up: bool


class JobStoreCollector(Collector):
    """A prometheus_client collector reading the job store and the broker at scrape time (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._steps = StepDurations()
        self._snapshot: Snapshot | None = None
        self._read_at = 0.0

    def _read(self) -> Snapshot:
        settings = self.settings
        jobs = {status.value: 0 for status in JobStatus}
        heartbeats: dict[str, float] = {}
        lease_expired = 0
        database_up = True
        try:
            stale_before = utcnow() - timedelta(seconds=settings.job_lease_seconds)
            with get_engine(settings).connect() as connection:
                for status, count in connection.execute(_JOBS_BY_STATUS):
                    jobs[JobStatus(status).value] = count
                for worker, beat in connection.execute(_HEARTBEATS):
                    if beat is not None:
                        heartbeats[worker] = beat.timestamp()
                lease_expired = connection.scalar(_LEASE_EXPIRED, {"stale_before": stale_before}) or 0
                for event_id, message, data in connection.execute(_STEP_EVENTS, {"floor": self._steps.floor}):
                    self._steps.add(event_id, message, data)
                self._steps.forget_below_floor()
        except Exception as exc:
            log.warning("metrics: the job store did not answer (%s: %s)", type(exc).__name__, exc)
            database_up = False
        try:
            queue_messages: int | None = waiting_messages(settings, timeout=BROKER_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics: the broker did not answer (%s: %s)", type(exc).__name__, exc)
            queue_messages = None
        return Snapshot(jobs, heartbeats, lease_expired, queue_messages, database_up)

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._read_at >= self.settings.metrics_db_cache_seconds:
                self._snapshot, self._read_at = self._read(), now
            return self._snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        jobs = GaugeMetricFamily("onnx_compress_jobs", "Jobs by status (all tenants)", labels=["status"])
        for status, count in snapshot.jobs.items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily(
            "onnx_compress_database_up", "1 when the job store answered the last read", value=int(snapshot.database_up)
        )
        broker_up = GaugeMetricFamily("onnx_compress_broker_up", "1 when the broker answered the last read")
        broker_up.add_metric([], int(snapshot.queue_messages is not None))
        yield broker_up
        if snapshot.queue_messages is not None:
            queue = GaugeMetricFamily(
                "onnx_compress_queue_messages", "Messages waiting in the broker's job queue", labels=["queue"]
            )
            queue.add_metric([self.settings.queue_name], snapshot.queue_messages)
            yield queue
        beats = GaugeMetricFamily(
            "onnx_compress_worker_heartbeat_timestamp_seconds",
            "Unix time of the newest lease renewal of each worker running a job",
            labels=["worker"],
        )
        for worker, stamp in sorted(snapshot.heartbeats.items()):
            beats.add_metric([worker], stamp)
        yield beats
        yield GaugeMetricFamily(
            "onnx_compress_jobs_lease_expired",
            "Running jobs whose heartbeat is older than JOB_LEASE_SECONDS (their worker is presumed dead)",
            value=snapshot.lease_expired,
        )
        steps = HistogramMetricFamily(
            "onnx_compress_step_duration_seconds", "Wall time of finished steps by step type", labels=["step"]
        )
        with self._lock:
            for step, counts in sorted(self._steps.buckets.items()):
                buckets = [(str(bound), count) for bound, count in zip(STEP_BUCKETS, counts, strict=True)]
                buckets.append(("+Inf", self._steps.counts[step]))
                steps.add_metric([step], buckets, self._steps.sums[step])
        yield steps
