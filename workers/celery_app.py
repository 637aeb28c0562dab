"""The Celery app, configured for long CPU-bound jobs that must survive worker crashes."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_init

from service.queue import broker_transport_options, job_queue, webhook_queue
from service.settings import Settings, get_settings
from workers import observability  # noqa: F401  (connects the logging and task-context signals)


def make_celery(settings: Settings) -> Celery:
    tasks = ["workers.tasks", "workers.recovery", "workers.webhook_tasks"]
    celery = Celery("onnx_compress", broker=settings.resolved_broker_url, include=tasks)
    celery.conf.update(
        task_queues=[job_queue(settings), webhook_queue(settings)],  # the queues service.queue publishes to
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        task_acks_late=True,  # a job's message is acked only when the job ends ...
        task_reject_on_worker_lost=True,  # ... and requeued if the process running it dies
        worker_prefetch_multiplier=1,  # one long job at a time per process; others stay in the queue
        worker_concurrency=settings.worker_concurrency,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # task events for Flower (Celery skips them on the embedded SQL broker)
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


EMBEDDED_BROKER_PREFIX = "sqla+sqlite:///"


@worker_init.connect
def _make_embedded_broker_folder(sender: Any = None, **_: Any) -> None:
    """The embedded (SQLite) broker's folder is made when a worker starts, not when this module is imported
    (importing it, as `celery inspect` or a health check does, must not create ./data in the working directory)."""
    app = getattr(sender, "app", None)  # the starting WorkController's Celery app
    url = str(app.conf.broker_url or "") if app is not None else ""
    if url.startswith(EMBEDDED_BROKER_PREFIX):
        Path(url.removeprefix(EMBEDDED_BROKER_PREFIX)).parent.mkdir(parents=True, exist_ok=True)


@lru_cache
def _celery_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def get_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    return _celery_for(settings.model_dump_json())


# `celery -A workers.celery_app worker` finds this
app = get_celery()
