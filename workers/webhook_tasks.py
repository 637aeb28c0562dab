"""Celery side of webhooks: the delivery task (one attempt per run, retried with backoff) and a sweep thread in
every worker's main process that publishes deliveries whose message was never published or was lost."""

from __future__ import annotations

import logging
import threading

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from service import webhooks
from service.queue import webhook_queue
from service.settings import Settings, get_settings
from workers.celery_app import app

log = logging.getLogger(__name__)
_stop = threading.Event()

SWEEP_S = 10.0  # how often unpublished or lost deliveries are looked for


@app.task(name=webhooks.DELIVER_WEBHOOK, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self: Task, delivery_id: str) -> None:
    """One attempt of the delivery; a failed one is retried after its backoff delay (same `webhook-id`)."""
    settings = get_settings()
    delay = webhooks.attempt_delivery(settings, delivery_id)
    if delay is not None:
        # the queue named (declared) explicitly: the embedded SQLite broker keeps exchange bindings per connection,
        # so a retry routed by exchange name alone from a pool process would be dropped
        raise self.retry(countdown=delay, queue=webhook_queue(settings))


def sweep(settings: Settings) -> list[str]:
    try:
        return webhooks.publish_pending(settings)
    except Exception:
        log.exception("webhook sweep failed; retrying next sweep")
        return []


def _watch(settings: Settings) -> None:
    while not _stop.wait(SWEEP_S):
        sweep(settings)


@worker_ready.connect
def _start_watch(**_: object) -> None:
    settings = get_settings()
    threading.Thread(target=_watch, args=(settings,), name="webhook-sweeps", daemon=True).start()


@worker_shutdown.connect
def _stop_watch(**_: object) -> None:
    _stop.set()
