"""The closed sets of job and step states, and of the kinds of job events."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class StepState(StrEnum):
    """One step of a job: pending until the pipeline reaches it; ends like its job when it was running."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class EventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    STEP = "step"
    INFO = "info"
    CANCEL_REQUESTED = "cancel_requested"
    REQUEUED = "requeued"
    SKIPPED = "skipped"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class WebhookEvent(StrEnum):
    """What a webhook can be told about a job."""

    STARTED = "job.started"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


TERMINAL_WEBHOOK_EVENTS = (WebhookEvent.SUCCEEDED, WebhookEvent.FAILED, WebhookEvent.CANCELED)


class DeliveryStatus(StrEnum):
    """A webhook delivery: being attempted, answered 2xx, or given up after its attempts."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
