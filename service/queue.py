"""The job queue, seen from the side that adds to it: publish `workers.tasks.run_job(job_id)` to the broker.

The message is the one Celery's `send_task` would publish (task protocol 2, JSON), written with kombu, Celery's
own transport library, so the API does not import Celery. It goes to the queue the workers consume
(`QUEUE_NAME`: a direct exchange and routing key of the same name) on Redis or on the embedded SQLite broker.
A broker that does not answer raises `BrokerUnavailableError` after a few quick retries.
Connections are pooled per process (a forked child opens its own).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Exchange, Queue
from kombu.exceptions import ChannelError, LimitExceeded, OperationalError
from kombu.pools import ProducerPool

from service.logging import current_request_id
from service.settings import Settings

RUN_JOB = "workers.tasks.run_job"
REQUEST_ID_HEADER_KEY = "request_id"  # message header: the id of the request that queued the task (logs)
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CONNECT_TIMEOUT_S = 2.0
POOL_LIMIT = 8


class BrokerUnavailableError(Exception):
    """The broker refused or did not answer; nothing was queued."""


@dataclass(frozen=True)
class TaskMessage:
    """A Celery task-protocol-2 message: routing headers, AMQP properties and the [args, kwargs, embed] body."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: tuple[list[Any], dict[str, Any], dict[str, Any]]


def task_message(task: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> TaskMessage:
    """What `Celery.send_task(task, args, kwargs)` publishes, with a fresh task id."""
    task_id = str(uuid.uuid4())
    kwargs = kwargs or {}
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],  # the worker's configured limits apply
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
        "origin": f"{os.getpid()}@{socket.gethostname()}",
        REQUEST_ID_HEADER_KEY: current_request_id(),  # workers log the job's lines with it (workers/observability.py)
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {"correlation_id": task_id, "reply_to": ""}
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return TaskMessage(headers=headers, properties=properties, body=(list(args), kwargs, embed))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Options for kombu's transport; the workers' Celery app uses the same ones."""
    if settings.resolved_broker_url.startswith("sqla+"):  # kombu hands these to create_engine
        return {"connect_args": {"timeout": 30}}
    # Redis redelivers unacked messages after this long: above the hard limit, or long jobs run twice
    return {"visibility_timeout": settings.broker_visibility_timeout}


def named_queue(name: str) -> Queue:
    """A queue as Celery declares it for `task_queues`: a direct exchange and routing key of the same name."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def job_queue(settings: Settings) -> Queue:
    """The queue workers consume: Celery's default for `task_default_queue` (direct exchange, same names)."""
    return named_queue(settings.queue_name)


def webhook_queue(settings: Settings) -> Queue:
    """The queue of webhook deliveries (`workers.webhook_tasks`), consumed by the workers too."""
    return named_queue(settings.resolved_webhook_queue_name)


def broker_connection(settings: Settings) -> Connection:
    """A new (lazy) connection to the configured broker; the embedded broker's folder is created first."""
    if settings.resolved_broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Connection(
        settings.resolved_broker_url,
        transport_options=broker_transport_options(settings),
        connect_timeout=CONNECT_TIMEOUT_S,
    )


class _Publisher:
    """One pooled connection set per broker URL and process."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.connection = broker_connection(settings)
        self.producers = ProducerPool(self.connection.Pool(limit=POOL_LIMIT), limit=POOL_LIMIT)
        self.queue = queue

    def publish(self, message: TaskMessage) -> None:
        with self.producers.acquire(block=True, timeout=30) as producer:
            producer.publish(
                message.body,
                exchange=self.queue.exchange,
                routing_key=self.queue.routing_key,
                declare=[self.queue],
                serializer="json",
                delivery_mode=2,  # persistent
                headers=message.headers,
                retry=True,
                retry_policy=PUBLISH_RETRY,
                **message.properties,
            )


_publishers: dict[tuple[int, str, str], _Publisher] = {}
_publishers_lock = threading.Lock()


def _publisher(settings: Settings, queue: Queue | None = None) -> _Publisher:
    queue = queue or job_queue(settings)
    key = (os.getpid(), settings.resolved_broker_url, queue.name)
    with _publishers_lock:
        publisher = _publishers.get(key)
        if publisher is None:
            publisher = _publishers[key] = _Publisher(settings, queue)
        return publisher


def enqueue_job(settings: Settings, job_id: str) -> str:
    """Queue one run of the job; returns the task id. Raises BrokerUnavailableError when nothing was queued."""
    return publish_task(settings, RUN_JOB, [job_id])


def publish_task(settings: Settings, task: str, args: list[Any], queue: Queue | None = None) -> str:
    """Publish one Celery task message to `queue` (default: the job queue); returns the task id.
    Raises BrokerUnavailableError when nothing was published."""
    message = task_message(task, args)
    publisher = _publisher(settings, queue)
    unavailable = (OperationalError, LimitExceeded, OSError, *publisher.connection.recoverable_connection_errors)
    try:
        publisher.publish(message)
    except unavailable as exc:
        raise BrokerUnavailableError(f"{type(exc).__name__}: {exc}") from exc
    return message.headers["id"]


def check_broker(settings: Settings, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise when the broker does not accept a connection (readiness probes)."""
    with broker_connection(settings) as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)


def waiting_messages(settings: Settings, timeout: float = CONNECT_TIMEOUT_S) -> int:
    """Messages waiting in the job queue, delivered ones not counted (Redis: the list's length; embedded: the
    SQLite broker's rows). Raises what kombu raises when the broker does not answer within `timeout`."""
    with broker_connection(settings) as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        channel = connection.channel()
        try:
            return channel.queue_declare(queue=settings.queue_name, passive=True).message_count
        except ChannelError:  # Redis: an empty queue does not exist
            return 0
        finally:
            channel.close()
