"""Worker logs: the same JSON (or text) lines as the api, carrying the job and the request that submitted it.

- `setup_logging`: with a receiver connected, Celery leaves logging alone and `service.logging` configures it
  (LOG_FORMAT, LOG_LEVEL) in the main process and in every pool process.
- `task_prerun` / `task_postrun`: while `run_job` runs, every record carries `job_id` and the `request_id` of the
  request that submitted the job (the API puts it in the task message's `request_id` header; a job queued again
  by a recovery sweep has none, and gets a fresh one so its lines still group).

Celery task events (`worker_send_task_events`, `task_send_sent_event` in workers/celery_app.py) let Flower follow
the workers; the worker metrics are read from the job store by the api (service/metrics.py).
"""

from __future__ import annotations

import contextvars
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun

from service.logging import configure_logging, job_id_var, new_request_id, request_id_var
from service.queue import REQUEST_ID_HEADER_KEY, RUN_JOB
from service.settings import get_settings

_tokens: dict[str, list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]]] = {}


@setup_logging.connect
def _configure(loglevel: str | int | None = None, **_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_format, loglevel or settings.log_level, "worker")


@task_prerun.connect
def _enter_job(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    request_id = getattr(task.request, REQUEST_ID_HEADER_KEY, None) or new_request_id()
    tokens = [(request_id_var, request_id_var.set(request_id))]
    if task.name == RUN_JOB and args:
        tokens.append((job_id_var, job_id_var.set(str(args[0]))))
    _tokens[task_id] = tokens


@task_postrun.connect
def _leave_job(task_id: str | None = None, **_: Any) -> None:
    for var, token in reversed(_tokens.pop(task_id or "", [])):
        var.reset(token)
