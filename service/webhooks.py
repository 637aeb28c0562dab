"""Signed webhooks: a job's events POSTed to its webhook URL per the Standard Webhooks spec.

- At submission, `job_webhook` decides where the job's deliveries go: the job's own `webhook` (its URL checked by
  the SSRF guard, `service.outbound`), else the server's `WEBHOOK_URL`; stored on the job.
- When a job reaches an event's state, `record_event` adds a `WebhookDelivery` in the transition's own transaction
  (job_store calls it), with the payload fixed then. One delivery per job and event (a unique constraint), so an
  event is sent once however often its transition is observed.
- `publish_pending` publishes a Celery task per recorded delivery (the API, the job runner and the workers' sweep
  call it); `attempt_delivery` (run by that task) makes one HTTP attempt: a compare-and-set on the attempt count
  lets one process make each attempt, every attempt is recorded, and a failed one is retried after
  `WEBHOOK_RETRY_BASE_SECONDS * 2**(n-1)` (at most WEBHOOK_RETRY_MAX_SECONDS) until WEBHOOK_MAX_ATTEMPTS.
  Every attempt carries the same `webhook-id` (the delivery id) and a fresh `webhook-timestamp` and signature.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from service.db import session_scope
from service.orm import Job, WebhookAttempt, WebhookDelivery, new_id, utcnow
from service.outbound import OutboundURLRefusedError, check_outbound_url, guarded_client
from service.queue import BrokerUnavailableError, publish_task, webhook_queue
from service.settings import Settings
from service.status import TERMINAL_WEBHOOK_EVENTS, DeliveryStatus, JobStatus, WebhookEvent

log = logging.getLogger(__name__)

DELIVER_WEBHOOK = "workers.webhook_tasks.deliver_webhook"
USER_AGENT = "onnx-compress-webhooks/1"
STALE_AFTER = timedelta(minutes=5)  # a due delivery untouched this long past its time lost its message: republish
MAX_ERROR_CHARS = 500
IN_FLIGHT_MARGIN = timedelta(seconds=60)  # an attempt in flight is not due again before its timeout plus this

EVENT_OF_STATUS = {
    JobStatus.RUNNING: WebhookEvent.STARTED,
    JobStatus.SUCCEEDED: WebhookEvent.SUCCEEDED,
    JobStatus.FAILED: WebhookEvent.FAILED,
    JobStatus.CANCELED: WebhookEvent.CANCELED,
}


class WebhooksDisabledError(Exception):
    """A job asked for a webhook while the server has no WEBHOOK_SECRET to sign with."""


def job_webhook(
    settings: Settings, url: str | None, events: list[WebhookEvent] | None, job_url_prefix: str
) -> dict[str, Any] | None:
    """Where a new job's deliveries go: its own webhook (checked now: `OutboundURLRefusedError`,
    `WebhooksDisabledError`), else the server's WEBHOOK_URL, else nowhere (None). `job_url_prefix` + the job id
    is the job's absolute URL, sent in payloads."""
    if url is not None:
        if not settings.webhook_secret:
            raise WebhooksDisabledError(
                "webhooks are disabled on this server (it has no WEBHOOK_SECRET to sign them with); submit the job "
                "without `webhook` and poll it, or ask the operator to set WEBHOOK_SECRET"
            )
        check_outbound_url(url, settings)
        chosen = list(dict.fromkeys(events or TERMINAL_WEBHOOK_EVENTS))
    elif settings.webhook_url and settings.webhook_secret:
        url, chosen = settings.webhook_url, list(dict.fromkeys(settings.webhook_events))
    else:
        return None
    return {"url": url, "events": [WebhookEvent(event).value for event in chosen], "job_url_prefix": job_url_prefix}


def metrics_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline figures of a finished job's metrics: output/input ratios, sizes, accuracy, wall time."""
    if not metrics:
        return None

    def model(part: Any) -> dict[str, Any] | None:
        if not isinstance(part, dict):
            return None
        latency = part.get("latency") if isinstance(part.get("latency"), dict) else {}
        return {
            "size_bytes": part.get("size_bytes"),
            "parameters": part.get("parameters"),
            "accuracy": part.get("accuracy"),
            "latency_median_ms": latency.get("median_ms"),
        }

    return {
        "ratios": metrics.get("ratios"),
        "input": model(metrics.get("input")),
        "output": model(metrics.get("output")),
        "wall_time_s": metrics.get("wall_time_s"),
    }


def _isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_payload(job: Job, event: WebhookEvent, job_url: str, now: datetime) -> dict[str, Any]:
    """The Standard Webhooks body: `type`, `timestamp`, and the job in `data`."""
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "type": event.value,
        "timestamp": _isoformat(now),
        "data": {
            "id": job.id,
            "status": JobStatus(job.status).value,
            "url": job_url,
            "model_id": job.model_id,
            "created_at": _isoformat(job.created_at),
            "started_at": _isoformat(job.started_at),
            "finished_at": _isoformat(job.finished_at),
            "error": error,
            "metrics": metrics_summary(job.metrics),
        },
    }


def record_event(session: Session, job_id: str, status: JobStatus) -> WebhookDelivery | None:
    """Add the delivery for the job's move to `status`, in the caller's transaction (before its commit), when the
    job has a webhook that wants the event and no delivery of it exists yet."""
    event = EVENT_OF_STATUS.get(JobStatus(status))
    if event is None:
        return None
    job = session.get(Job, job_id, populate_existing=True)  # the row as the caller's UPDATE left it
    if job is None or not job.webhook or event.value not in job.webhook.get("events", []):
        return None
    exists = session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id, WebhookDelivery.event == event)
    )
    if exists is not None:
        return None
    now = utcnow()
    job_url = str(job.webhook.get("job_url_prefix", "")) + job.id
    delivery = WebhookDelivery(
        id=f"msg_{new_id()}",
        job_id=job_id,
        event=event,
        url=str(job.webhook["url"]),
        payload=build_payload(job, event, job_url, now),
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=None,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def publish_pending(settings: Settings, job_id: str | None = None) -> list[str]:
    """Publish a delivery task for each pending delivery without one (of one job, or all), and for each due
    delivery left untouched past STALE_AFTER (its message was lost). Each is taken by compare-and-set, so
    concurrent callers publish it once; when the broker does not answer it is left for the next sweep."""
    now = utcnow()
    query = select(WebhookDelivery.id, WebhookDelivery.next_attempt_at).where(
        WebhookDelivery.status == DeliveryStatus.PENDING,
        or_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.next_attempt_at < now - STALE_AFTER),
    )
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    published = []
    with session_scope(settings) as session:
        for delivery_id, due in session.execute(query.order_by(WebhookDelivery.created_at)).all():
            same_due = (
                WebhookDelivery.next_attempt_at.is_(None) if due is None else WebhookDelivery.next_attempt_at == due
            )
            taken = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING, same_due)
                .values(next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            if taken.rowcount != 1:
                continue
            try:
                publish_task(settings, DELIVER_WEBHOOK, [delivery_id], webhook_queue(settings))
            except BrokerUnavailableError as exc:
                log.warning("webhook delivery %s: the broker did not answer (%s); the sweep retries", delivery_id, exc)
                session.execute(
                    update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(next_attempt_at=due)
                )
                session.commit()
                break
            published.append(delivery_id)
    return published


def publish_for_job(settings: Settings, job_id: str) -> None:
    """`publish_pending` for one job right after its transition; never raises (the workers' sweep catches up)."""
    try:
        publish_pending(settings, job_id)
    except Exception:
        log.exception("job %s: publishing its webhook deliveries failed; the workers' sweep retries", job_id)


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds between attempt `attempt` (failed) and the next one: exponential, capped."""
    return min(settings.webhook_retry_base_seconds * 2 ** (attempt - 1), settings.webhook_retry_max_seconds)


def sign_headers(secret: str, delivery_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt: the delivery's id, the attempt's time and signature."""
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, now, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def _post(settings: Settings, delivery: WebhookDelivery, now: datetime) -> tuple[int | None, str | None]:
    """One HTTP attempt: (status code, None) when answered, (None, error) when not. The body is not read."""
    if not settings.webhook_secret:
        return None, "WEBHOOK_SECRET is not set on the server: nothing to sign with"
    body = json.dumps(delivery.payload, separators=(",", ":"))
    headers = sign_headers(settings.webhook_secret, delivery.id, body, now)
    try:
        with (
            guarded_client(settings, timeout=settings.webhook_timeout_seconds) as client,
            client.stream("POST", delivery.url, content=body.encode(), headers=headers) as response,
        ):
            return response.status_code, None
    except OutboundURLRefusedError as exc:
        return None, f"refused: {exc}"[:MAX_ERROR_CHARS]
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS] if str(exc) else type(exc).__name__


def attempt_delivery(settings: Settings, delivery_id: str) -> float | None:
    """Make the next attempt of a due delivery and record it. Returns the delay before the next attempt when this
    one failed and attempts remain, else None (delivered, given up, not due, or another process attempts it)."""
    with session_scope(settings) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        now = utcnow()
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return None
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now + timedelta(seconds=1):
            return None  # a duplicate message ahead of its time; the scheduled one follows
        number = delivery.attempts + 1
        in_flight = timedelta(seconds=settings.webhook_timeout_seconds) + IN_FLIGHT_MARGIN  # not due meanwhile
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.attempts == delivery.attempts,
            )
            .values(attempts=number, next_attempt_at=now + in_flight)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if taken.rowcount != 1:
            return None
        session.expunge(delivery)

    started, clock = utcnow(), time.perf_counter()
    status_code, error = _post(settings, delivery, started)
    duration_ms = (time.perf_counter() - clock) * 1000
    delivered = status_code is not None and 200 <= status_code < 300
    if status_code is not None and not delivered:
        error = f"the receiver answered HTTP {status_code}; 2xx means delivered"
    give_up = not delivered and number >= settings.webhook_max_attempts
    delay = None if delivered or give_up else retry_delay(settings, number)
    try:
        _record_attempt(
            settings, delivery_id, number, started, duration_ms, status_code, error, delivered, give_up, delay
        )
    except IntegrityError:  # the job (and its deliveries) was deleted meanwhile
        log.info("webhook delivery %s: gone (its job was deleted); attempt %s not recorded", delivery_id, number)
        return None
    if not delivered:
        log.warning("webhook delivery %s attempt %s to %s failed: %s", delivery_id, number, delivery.url, error)
    return delay


def _record_attempt(
    settings: Settings,
    delivery_id: str,
    number: int,
    started: datetime,
    duration_ms: float,
    status_code: int | None,
    error: str | None,
    delivered: bool,
    give_up: bool,
    delay: float | None,
) -> None:
    with session_scope(settings) as session:
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                number=number,
                started_at=started,
                duration_ms=duration_ms,
                status_code=status_code,
                error=error,
            )
        )
        values: dict[str, Any]
        if delivered or give_up:
            final = DeliveryStatus.SUCCEEDED if delivered else DeliveryStatus.FAILED
            values = {"status": final, "finished_at": utcnow()}
        else:
            values = {"next_attempt_at": utcnow() + timedelta(seconds=delay or 0)}
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))


def deliveries_of(session: Session, job_id: str) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """A job's deliveries, oldest first, each with its attempts in order."""
    deliveries = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )
    attempts: dict[str, list[WebhookAttempt]] = {delivery.id: [] for delivery in deliveries}
    if deliveries:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [(delivery, attempts[delivery.id]) for delivery in deliveries]
