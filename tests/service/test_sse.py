"""GET /v1/jobs/{id}/events as server-sent events, read from a real api (PostgreSQL + Redis) as a client streams it:
heartbeats while a job waits, events as the worker records them, the terminal one last and then the end of the
stream; `Last-Event-ID` and `after` resume, 204 once nothing is left, the stream's length bounded by a setting; the
JSON answer is unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.service.conftest import FAST, Stack
from tests.service.stack import ServiceProcess, drop_postgres_schema, free_port, postgres_schema, production_env

pytestmark = [pytest.mark.services, pytest.mark.slow]

SSE = {"Accept": "text/event-stream"}
QUANTIZE = [{"type": "quantize", "mode": "dynamic"}]


@dataclass
class Message:
    """One server-sent event, or a comment line (`comment` set, the rest empty)."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: str | None = None
    comment: str | None = None


def messages(response: httpx.Response) -> Iterator[Message]:
    """Parse the stream as it arrives (the SSE wire format: fields, a blank line ends an event)."""
    current = Message()
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Message(comment=line[1:].strip())
        elif line == "":
            if current.data or current.id or current.event or current.retry:
                yield current
            current = Message()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                current.data.append(value)
            elif name in {"id", "event", "retry"}:
                setattr(current, name, value)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("sse")
    schema = postgres_schema()
    env = production_env(root / "data", schema, **FAST, SSE_HEARTBEAT_SECONDS="0.5", SSE_POLL_SECONDS="0.2")
    stack = Stack(env, root)
    try:
        stack.migrate()
        stack.start_api("api")
        yield stack
    finally:
        stack.stop()
        drop_postgres_schema(schema)


def submit(http: httpx.Client, model_path: Any) -> dict[str, Any]:
    model = http.post("/v1/models", files={"file": ("m.onnx", model_path.read_bytes(), "application/octet-stream")})
    assert model.status_code == 201, model.text
    job = http.post("/v1/jobs", json={"model_id": model.json()["id"], "steps": QUANTIZE})
    assert job.status_code == 202, job.text
    return job.json()


def test_stream_length_is_bounded_and_idle_streams_beat(stack: Stack, digits_cnn) -> None:
    """A job that stays queued (no worker yet): its stream sends the queued event, heartbeats, and ends after
    SSE_MAX_STREAM_SECONDS (an api of its own with 2 s and SSE_MAX_STREAMS=1: a second stream meanwhile is a 503)."""
    env = {**stack.env, "SSE_MAX_STREAM_SECONDS": "2", "SSE_MAX_STREAMS": "1"}
    short = ServiceProcess("api", env, stack.root / "api-short.log", port=free_port())
    stack.processes.append(short.start())
    short.wait_http_ready()
    with httpx.Client(base_url=short.url, timeout=30) as http:
        job = submit(http, digits_cnn.path)
        started = time.monotonic()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=SSE) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = messages(response)
            got = [next(stream)]
            busy = http.get(f"/v1/jobs/{job['id']}/events", headers=SSE)
            got += list(stream)
        elapsed = time.monotonic() - started
        assert busy.status_code == 503 and busy.json()["code"] == "too_many_streams" and "Retry-After" in busy.headers
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=SSE) as again:  # the slot was given back
            assert again.status_code == 200 and next(messages(again)).comment is not None
        assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204  # no queued job left for the worker
    events = [m for m in got if m.comment is None and m.data]
    assert [m.event for m in events] == ["queued"]
    assert sum(m.comment == "heartbeat" for m in got) >= 1
    assert 1.5 < elapsed < 20  # ended by the 2 s bound, not by the job (which never ran)
    short.stop()


def test_stream_follows_a_job_to_its_end(stack: Stack, digits_cnn) -> None:
    with stack.client() as http:
        job = submit(http, digits_cnn.path)  # no worker yet: queued
        url = f"/v1/jobs/{job['id']}/events"
        with http.stream("GET", url, headers=SSE) as response:
            assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
            stream = messages(response)
            first = next(m for m in stream if m.data)
            assert first.event == "queued" and first.retry is None
            assert next(m for m in stream if m.comment is not None).comment == "heartbeat"  # still open, idle
            stack.start_worker()  # the job starts while the stream is open
            rest = [m for m in stream if m.data]
        # the stream ended by itself once the job had ended, with the terminal event last
        events = [first, *rest]
        kinds = [m.event for m in events]
        assert kinds[0] == "queued" and "started" in kinds and "step" in kinds and kinds[-1] == "succeeded"
        ids = [int(m.id or 0) for m in events]
        assert ids == sorted(set(ids))
        data = [json.loads("\n".join(m.data)) for m in events]
        assert [d["id"] for d in data] == ids and [d["kind"] for d in data] == kinds

        # the JSON answer is unchanged: the same events as a list
        listed = http.get(url)
        assert listed.headers["content-type"] == "application/json"
        assert listed.json() == data

        # resuming: Last-Event-ID (an EventSource reconnecting) wins over `after`; nothing left is a 204
        resumed = http.get(url, params={"after": 0}, headers={**SSE, "Last-Event-ID": str(ids[1])})
        assert [m.id for m in messages(resumed) if m.data] == [str(i) for i in ids[2:]]
        tail = http.get(url, params={"after": ids[-2]}, headers=SSE)
        assert [m.id for m in messages(tail) if m.data] == [str(ids[-1])]
        done = http.get(url, headers={**SSE, "Last-Event-ID": str(ids[-1])})
        assert done.status_code == 204 and done.content == b""
        bad = http.get(url, headers={**SSE, "Last-Event-ID": "abc"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_last_event_id"
        missing = http.get("/v1/jobs/nosuchjob/events", headers=SSE)
        assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"
