"""The Celery app, configured for long CPU-bound jobs that must survive worker crashes."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.core.config import Settings, get_settings

RUN_JOB = "workers.tasks.run_job"


def make_celery(settings: Settings) -> Celery:
    celery = Celery("onnx_compress", broker=settings.resolved_broker_url, include=["workers.tasks", "workers.recovery"])
    if settings.resolved_broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery.conf.update(
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        task_acks_late=True,  # a job's message is acked only when the job ends ...
        task_reject_on_worker_lost=True,  # ... and requeued if the process running it dies
        worker_prefetch_multiplier=1,  # one long job at a time per process; others stay in the queue
        worker_concurrency=settings.worker_concurrency,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.resolved_broker_url.startswith("sqla+"):  # kombu hands these to create_engine
        return {"connect_args": {"timeout": 30}}
    # Redis redelivers unacked messages after this long: above the hard limit, or long jobs run twice
    return {"visibility_timeout": settings.broker_visibility_timeout}


@lru_cache
def _celery_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def get_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    return _celery_for(settings.model_dump_json())


def enqueue_job(settings: Settings, job_id: str) -> None:
    get_celery(settings).send_task(RUN_JOB, args=[job_id], queue=settings.queue_name)


# `celery -A workers.celery_app worker` finds this
app = get_celery()
