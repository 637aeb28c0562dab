"""A job's events as server-sent events (`GET /v1/jobs/{id}/events` with `Accept: text/event-stream`).

Each event is sent as `id: <event id>` (the cursor: `after` and `Last-Event-ID` take it), `event: <kind>` and
`data: <the event as JSON, the same object the JSON list holds>`. The stream starts after `Last-Event-ID` (an
EventSource reconnecting) or else `after`, sends what is new every SSE_POLL_SECONDS, a comment line when idle for
SSE_HEARTBEAT_SECONDS (keeps proxies from closing it), and ends once the job's terminal event was sent, when the
job is deleted, or after SSE_MAX_STREAM_SECONDS (clients reconnect with Last-Event-ID). A request for a job that
has ended with nothing after the cursor gets 204, which tells an EventSource to stop reconnecting. One api process
serves at most SSE_MAX_STREAMS streams at once; one more is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi import status
from fastapi.sse import format_sse_event
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.errors import ApiError
from app.job_views import event_out
from service.db import session_scope
from service.orm import Job, JobEvent
from service.settings import Settings
from service.status import JobStatus

MEDIA_TYPE = "text/event-stream"
RECONNECT_MS = 2000  # `retry:` sent first: how long an EventSource waits before reconnecting
MAX_EVENT_ID = 2**62
BATCH = 500  # events read per poll at most (a long backlog is sent over several polls)
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream
BUSY_RETRY_AFTER_S = 5

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the events after the cursor: a JSON list, or with `Accept: text/event-stream` a stream of "
        "server-sent events (`id:` the event id, `event:` its kind, `data:` the event as JSON) that ends once "
        "the job has ended",
        "content": {
            MEDIA_TYPE: {
                "schema": {"type": "string"},
                "example": 'id: 42\nevent: step\ndata: {"id": 42, "kind": "step", "message": "step 0 (quantize) '
                'started", "progress": 0.1, "stage": "0:quantize", "attempt": 1, "data": null, '
                '"created_at": "2026-11-29T21:00:00Z"}\n\n',
            }
        },
    },
    204: {"description": "text/event-stream only: the job has ended and no event is after the cursor"},
}


def wants_event_stream(accept: str | None) -> bool:
    """True when the Accept header asks for server-sent events (JSON stays the default)."""
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        if media.strip().lower() == MEDIA_TYPE and "q=0" not in params.replace(" ", "").split(";"):
            return True
    return False


def start_after(after: int, last_event_id: str | None) -> int:
    """Where a stream starts: `Last-Event-ID` (an EventSource reconnecting) over the `after` query parameter."""
    if last_event_id is None or not last_event_id.strip():
        return after
    text = last_event_id.strip()
    if not text.isdigit() or int(text) > MAX_EVENT_ID:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "invalid_last_event_id",
            f"Last-Event-ID {text[:40]!r} is not an event id: send the `id:` of the last event received",
        )
    return int(text)


class Slot:
    """One stream's place among the process's SSE_MAX_STREAMS; released once, by the stream's end or, for a stream
    that never started (the client left first), when its generator is collected."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots, self._held = slots, True

    def release(self) -> None:
        with self._slots.lock:
            if self._held:
                self._held = False
                self._slots.open -= 1


class StreamSlots:
    """How many streams this process serves now, bounded by SSE_MAX_STREAMS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0

    def take(self, limit: int) -> Slot:
        with self.lock:
            if self.open >= limit:
                raise ApiError(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    "too_many_streams",
                    f"this server already serves {limit} event streams (setting SSE_MAX_STREAMS); retry later, "
                    "or read the events as JSON (without Accept: text/event-stream)",
                    headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
                )
            self.open += 1
        return Slot(self)


SLOTS = StreamSlots()


def _read(settings: Settings, job_id: str, after: int) -> tuple[JobStatus | None, list[bytes], int]:
    """(the job's status, new events encoded, the last event id): the status is read first, so when it is terminal
    the events read after it include the terminal one (committed together)."""
    with session_scope(settings) as session:
        job_status = session.scalar(select(Job.status).where(Job.id == job_id))
        query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
        events = list(session.scalars(query.limit(BATCH)))
    encoded = [
        format_sse_event(data_str=event_out(e).model_dump_json(), event=str(e.kind), id=str(e.id)) for e in events
    ]
    return job_status, encoded, events[-1].id if events else after


def has_more(settings: Settings, job_id: str, after: int) -> bool:
    """Whether a stream from `after` would send anything: the job is still going, or events follow `after`."""
    job_status, events, _ = _read(settings, job_id, after)
    return bool(events) or (job_status is not None and not job_status.terminal)


def event_stream_response(settings: Settings, job_id: str, after: int) -> StreamingResponse:
    """The streaming answer; takes one of the process's stream slots for as long as it lasts (503 when none is
    free)."""
    slot = SLOTS.take(settings.sse_max_streams)
    stream = _stream(settings, job_id, after, slot)
    weakref.finalize(stream, slot.release)
    return StreamingResponse(stream, media_type=MEDIA_TYPE, headers=HEADERS)


async def _stream(settings: Settings, job_id: str, after: int, slot: Slot) -> AsyncIterator[bytes]:
    """Events as they are recorded, heartbeats while idle, until the job has ended (or the stream's time is up)."""
    try:
        async for chunk in _events(settings, job_id, after):
            yield chunk
    finally:
        slot.release()


async def _events(settings: Settings, job_id: str, after: int) -> AsyncIterator[bytes]:
    started = last_sent = time.monotonic()
    yield format_sse_event(retry=RECONNECT_MS, comment=f"events of job {job_id}")
    while True:
        job_status, events, after = await run_in_threadpool(_read, settings, job_id, after)
        for event in events:
            yield event
        now = time.monotonic()
        if events:
            last_sent = now
            if len(events) == BATCH:
                continue  # a backlog: send the rest before waiting
        if job_status is None or job_status.terminal or now - started >= settings.sse_max_stream_seconds:
            return
        if now - last_sent >= settings.sse_heartbeat_seconds:
            yield b": heartbeat\n\n"
            last_sent = now
        remaining = settings.sse_max_stream_seconds - (now - started)
        await asyncio.sleep(max(0.0, min(settings.sse_poll_seconds, remaining)))
