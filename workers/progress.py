"""A progress sink that writes the engine's progress, events and per-step status into the job record."""

from __future__ import annotations

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
    """Renews the job's lease from a background thread while the engine works."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, sink: JobProgressSink) -> None:
        self.settings, self.job_id, self.attempt, self.sink = settings, job_id, attempt, sink
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.job_heartbeat_seconds):
            try:
                with session_scope(self.settings) as session:
                    if not job_store.heartbeat(session, self.job_id, self.attempt):
                        self.sink.lease_lost.set()
                        return
            except Exception:  # a database blip: try again next beat; the lease is long enough
                continue
