"""A progress sink that writes the engine's progress, events and per-step status into the job record."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any

from compression.errors import JobCanceledError, JobInterrupted
from compression.jsonable import to_jsonable
from compression.pipeline import StepMetrics
from service import job_store
from service.db import session_scope
from service.settings import Settings
from service.status import EventKind, JobStatus, StepState

log = logging.getLogger(__name__)


class LeaseLost(JobInterrupted):
    """Another attempt owns the job now (this worker was presumed dead); stop without writing."""


class JobProgressSink:
    """The engine's ProgressSink for one attempt of one job (writes are dropped once the lease is lost)."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, steps: list[dict[str, Any]]) -> None:
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.steps = steps
        self.lease_lost = threading.Event()
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_cancel_check = 0.0

    def _write(self, **kwargs: Any) -> None:
        with session_scope(self.settings) as session:
            if not job_store.update_progress(session, self.job_id, self.attempt, **kwargs):
                self.lease_lost.set()

    def progress(self, fraction: float, message: str | None = None) -> None:
        now = time.monotonic()
        stage = message or self._last_stage
        if stage == self._last_stage and now - self._last_write < 0.5:
            return  # throttle: progress inside a step can be reported thousands of times
        self._last_write, self._last_stage = now, stage
        self._write(progress=round(fraction, 4), stage=(stage or "")[:64])

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self._write(event=(EventKind.INFO, message, data))

    def check_canceled(self) -> None:
        if self.lease_lost.is_set():
            raise LeaseLost
        now = time.monotonic()
        if now - self._last_cancel_check < self.settings.cancel_poll_seconds:
            return
        self._last_cancel_check = now
        with session_scope(self.settings) as session:
            if job_store.is_cancel_requested(session, self.job_id):
                raise JobCanceledError

    def step_started(self, index: int, step_type: str) -> None:
        self.steps[index]["status"] = StepState.RUNNING
        started = (EventKind.STEP, f"step {index} ({step_type}) started", None)
        self._write(steps=self.steps, stage=f"{index}:{step_type}", event=started)

    def step_finished(self, index: int, metrics: StepMetrics) -> None:
        self.steps[index]["status"] = StepState.SUCCEEDED
        self.steps[index]["metrics"] = to_jsonable(metrics)
        summary = {"wall_time_s": round(metrics.wall_time_s, 3), "size_bytes": metrics.size_bytes}
        self._write(steps=self.steps, event=(EventKind.STEP, f"step {index} ({metrics.type}) finished", summary))

    def mark_unfinished(self, status: JobStatus) -> list[dict[str, Any]]:
        """Steps that were running end with the job's status; pending ones stay pending."""
        for step in self.steps:
            if step["status"] == StepState.RUNNING:
                step["status"] = StepState(status.value)
        return self.steps


class Heartbeat:
    """Renews the job's lease from a background thread while the engine works.

    Robust against a busy job: the renewal uses its own small engine whose connections give up after one beat
    (connect, lock wait and statement timeouts), so a full pool, a slow statement or a lock held on the job's side
    never holds it up, and a failed renewal is retried within a second, not a beat later. Threads share the GIL:
    pure-Python and numpy loops hand it over every few milliseconds, but one long C call that keeps it (protobuf
    serialization of a large model, ONNX shape inference: seconds per hundreds of MB) delays the beat until it
    returns, so the lease (JOB_LEASE_SECONDS, default 300 s) is 20 beats long; a late beat is logged.
    """

    RETRY_S = 1.0

    def __init__(self, settings: Settings, job_id: str, attempt: int, sink: JobProgressSink) -> None:
        self.settings, self.job_id, self.attempt, self.sink = settings, job_id, attempt, sink
        self._stop = threading.Event()
        # run in a copy of the caller's context: its log lines carry the job's job_id and request_id
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name=f"heartbeat-{job_id}", daemon=True)
        self.beats = 0
        self.longest_gap_s = 0.0  # between renewals, for logs and tests

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _renew(self) -> bool:
        with session_scope(self.settings, quick_timeout_s=self.settings.job_heartbeat_seconds) as session:
            return job_store.heartbeat(session, self.job_id, self.attempt)

    def _run(self) -> None:
        interval = self.settings.job_heartbeat_seconds
        last = time.monotonic()
        wait = interval
        while not self._stop.wait(wait):
            try:
                owned = self._renew()
            except Exception as exc:  # a database blip or timeout: retry soon; the lease is many beats long
                log.warning("job %s: lease renewal failed (%s); retrying", self.job_id, exc)
                wait = min(self.RETRY_S, interval)
                continue
            if not owned:
                self.sink.lease_lost.set()
                return
            now = time.monotonic()
            gap, last = now - last, now
            self.beats += 1
            self.longest_gap_s = max(self.longest_gap_s, gap)
            if gap > 2 * interval:
                log.warning(
                    "job %s: lease renewed %.1f s after the previous one (every %.1f s planned; lease %s s)",
                    self.job_id,
                    gap,
                    interval,
                    self.settings.job_lease_seconds,
                )
            wait = interval
