"""Logs: one JSON object per line (or plain text), carrying the request and the job they belong to.

`request_id` and `job_id` live in context variables: the API sets the request id for each request (from its
`X-Request-ID` header, or a fresh one), the worker sets both while it runs a job (the request id of the request that
submitted it travels in the task message). Every record logged meanwhile, by any logger, carries them.

`configure_logging(settings, service)` is called once by each entry point (`onnx-compress api|worker|serve`);
`LOG_FORMAT` (json | text) and `LOG_LEVEL` choose the rest. No framework imports here: the API and the workers
hook it into their own machinery.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # what an incoming id may be; else a new one

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# attributes every LogRecord has; anything else given with `extra=` is an event field and goes into the JSON
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str:
    """The id to use for a request: the caller's `X-Request-ID` when it is a sane token, else a new one."""
    if value and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return new_request_id()


def current_request_id() -> str | None:
    return request_id_var.get()


@contextmanager
def log_context(*, request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Records logged inside carry these ids (those not given keep their current value)."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if job_id is not None:
        tokens.append((job_id_var, job_id_var.set(job_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Stamps every record with the current `request_id`, `job_id` and the service's name."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        record.service = self.service
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, service, request_id, job_id, fields given with
    `extra=`, and `exc` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
            "request_id": getattr(record, "request_id", None),
            "job_id": getattr(record, "job_id", None),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s [%(service)s req=%(request_id)s job=%(job_id)s] %(message)s"
        )


# loggers that come with their own handlers (uvicorn's); they are emptied so their records reach ours once
_FRAMEWORK_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected")


def configure_logging(
    log_format: LogFormat | str, level: str | int, service: str, stream: Any = None
) -> logging.Handler:
    """Send every record, from any logger, through one handler on the root logger (stderr by default) in the
    chosen format, stamped with the current ids. Safe to call again (the previous handler is replaced)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter(service))
    handler.setFormatter(JsonFormatter() if LogFormat(log_format) == LogFormat.JSON else TextFormatter())
    handler.set_name("onnx-compress")
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _FRAMEWORK_LOGGERS:
        framework = logging.getLogger(name)
        framework.handlers.clear()
        framework.propagate = True
    logging.captureWarnings(True)
    return handler
