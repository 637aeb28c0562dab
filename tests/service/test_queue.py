"""The enqueue side of the job queue: Celery's own message, published with kombu, on both brokers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import redis
from celery import Celery, signals
from celery.worker.request import Request

from service.queue import (
    REQUEST_ID_HEADER_KEY,
    RUN_JOB,
    BrokerUnavailableError,
    _publisher,
    broker_connection,
    enqueue_job,
    job_queue,
    task_message,
)
from service.settings import Settings
from tests.service.stack import REDIS_URL
from workers.celery_app import get_celery

ROOT = Path(__file__).resolve().parents[2]


@cache
def celery_reference() -> Celery:
    """A Celery app knowing the task by name (the real one lives in workers/, which a worker loads)."""
    app = Celery("reference", broker="memory://", set_as_current=False)

    @app.task(name=RUN_JOB)
    def run_job(job_id: str) -> str:
        return job_id

    return app


def test_message_matches_what_celery_sends() -> None:
    ours = task_message(RUN_JOB, ["job-1"])
    theirs = celery_reference().amqp.as_task_v2(ours.headers["id"], RUN_JOB, args=["job-1"])
    # Celery's own headers, plus ours: the submitting request's id (Celery hands custom headers to task.request)
    assert ours.headers.keys() == theirs.headers.keys() | {REQUEST_ID_HEADER_KEY}
    same = (
        "lang",
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "retries",
        "eta",
        "expires",
        "argsrepr",
        "kwargsrepr",
    )
    assert {key: ours.headers[key] for key in same} == {key: theirs.headers[key] for key in same}
    assert ours.properties == theirs.properties
    assert list(ours.body) == [list(theirs.body[0]), theirs.body[1], theirs.body[2]]


def received(settings: Settings) -> Request:
    """Take the next message off the job queue and read it as a Celery worker does."""
    app = celery_reference()
    with broker_connection(settings) as connection:
        message = connection.SimpleQueue(job_queue(settings)).get(timeout=10)
        message.ack()
    return Request(message, app=app, task=app.tasks[RUN_JOB])


def check_round_trip(settings: Settings) -> None:
    task_id = enqueue_job(settings, "job-42")
    request = received(settings)
    assert request.task_name == RUN_JOB and request.id == task_id
    assert request.args == ["job-42"] and request.kwargs == {}
    assert request.delivery_info["routing_key"] == settings.queue_name


def test_embedded_broker_round_trip(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    check_round_trip(settings)
    assert _publisher(settings) is _publisher(settings)  # one pooled publisher per broker and process


@pytest.fixture
def redis_settings(tmp_path: Path) -> Iterator[Settings]:
    queue = f"q_test_{uuid.uuid4().hex[:12]}"
    yield Settings(data_dir=tmp_path / "data", broker_url=REDIS_URL, queue_name=queue)
    redis.Redis.from_url(REDIS_URL).delete(queue, f"_kombu.binding.{queue}")


@pytest.mark.services
def test_redis_broker_round_trip(redis_settings: Settings) -> None:
    check_round_trip(redis_settings)
    check_round_trip(redis_settings)  # the pooled connection is reused


def test_broker_down_is_one_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:1"):
        enqueue_job(settings, "job-1")


def test_importing_the_celery_app_creates_no_folder_and_a_starting_worker_makes_its_broker_folder(
    tmp_path: Path,
) -> None:
    """Importing workers.celery_app (celery inspect, health checks) used to create ./data in the working
    directory; the embedded broker's folder is now made by the worker_init signal, when a worker starts."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"DATA_DIR", "BROKER_URL", "DATABASE_URL"}}
    code = "import workers.tasks, workers.celery_app"
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(cwd.iterdir()) == []
    data_dir = tmp_path / "fresh" / "data"
    app = get_celery(Settings(data_dir=data_dir))
    starting_worker = type("WorkController", (), {"app": app})()  # what Celery sends: a hashable object with .app
    signals.worker_init.send(sender=starting_worker)
    assert data_dir.is_dir()
