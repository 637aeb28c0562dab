"""Signed webhooks against real processes: `onnx-compress serve` (api + Celery worker, SQLite), a receiver HTTP
server in this process verifying every request with the `standardwebhooks` package."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from onnx_compress import Client
from service import webhooks
from service.db import session_scope
from service.queue import publish_task, webhook_queue
from service.settings import Settings
from service.status import DeliveryStatus, JobStatus, WebhookEvent
from tests.service.client import poll, submit, upload
from tests.service.conftest import FAST, Stack
from tests.service.stack import drop_postgres_schema, postgres_schema, production_env, wait_until

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Receiver:
    """Records every POST; answers per path: /ok 204, /slow 204 after 1 s, /flaky 500 then 200, /down 500."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(headers, body) for got, headers, body in self.requests if got == path]

    def verified(self, path: str) -> list[dict[str, Any]]:
        """Every request to `path`, its signature verified (raises on a bad one), as (webhook-id, payload)."""
        return [
            {"id": headers["webhook-id"], **Webhook(SECRET).verify(body, headers)}
            for headers, body in self.received(path)
        ]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                seen = sum(1 for path, _, _ in receiver.requests if path == self.path)
            if self.path == "/slow":  # still answering while duplicate task messages arrive
                time.sleep(1.0)
            ok = self.path in ("/ok", "/slow") or (self.path == "/flaky" and seen > 1)
            self.send_response(204 if self.path in ("/ok", "/slow") else 200 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


WEBHOOK_ENV = {
    "WEBHOOK_SECRET": SECRET,
    "OUTBOUND_ALLOWLIST": "127.0.0.1/32",  # the receiver; every other loopback address stays refused
    "OUTBOUND_ALLOW_HTTP": "true",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "WEBHOOK_MAX_ATTEMPTS": "3",
    "WEBHOOK_TIMEOUT_SECONDS": "5",
    "LATENCY_MIN_SECONDS": "0",  # quick jobs: the webhooks are under test, not the latency figures
    "LATENCY_MAX_SECONDS": "2",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("webhooks")
    running = Stack({"DATA_DIR": str(root / "data"), **FAST, **WEBHOOK_ENV}, root)
    running.start_api("serve")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model_id(stack: Stack, digits_cnn: Any) -> str:
    with stack.client() as client:
        return upload(client, "/v1/models", digits_cnn.path)["id"]


def job_body(model_id: str, webhook: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model_id": model_id, "steps": [{"type": "quantize", "mode": "dynamic"}]}
    if webhook is not None:
        body["webhook"] = webhook
    return body


def deliveries(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    with stack.client() as client:
        response = client.get(f"/v1/jobs/{job_id}/webhook-deliveries")
    assert response.status_code == 200, response.text
    return response.json()


def settled(stack: Stack, job_id: str, count: int) -> list[dict[str, Any]] | None:
    """The job's deliveries once `count` exist and none is pending."""
    found = deliveries(stack, job_id)
    return found if len(found) == count and all(d["status"] != "pending" for d in found) else None


def stack_settings(stack: Stack) -> Settings:
    return Settings(_env_file=None, **{name.lower(): value for name, value in stack.env.items()})  # type: ignore[call-arg]


def test_succeeded_is_delivered_signed_exactly_once_per_job(stack: Stack, receiver: Receiver, model_id: str) -> None:
    hook = {"url": receiver.url + "/ok", "events": ["job.started", "job.succeeded"]}
    with stack.client() as client:
        jobs = [submit(client, job_body(model_id, hook)) for _ in range(2)]
        for job in jobs:
            assert poll(client, job["id"], timeout=120)["status"] == JobStatus.SUCCEEDED
    for job in jobs:
        wait_until(lambda job=job: settled(stack, job["id"], 2), 30, f"job {job['id']}'s deliveries")

    # the transition observed again (a redelivered task, a sweep): no second delivery is recorded ...
    settings = stack_settings(stack)
    with session_scope(settings) as session:
        assert webhooks.record_event(session, jobs[0]["id"], JobStatus.SUCCEEDED) is None
    # ... and a duplicate task message for a delivered event sends nothing
    first = deliveries(stack, jobs[0]["id"])
    for delivery in first:
        publish_task(settings, webhooks.DELIVER_WEBHOOK, [delivery["id"]], webhook_queue(settings))
    time.sleep(2)

    payloads = receiver.verified("/ok")  # every signature checked with standardwebhooks
    for job in jobs:
        mine = [p for p in payloads if p["data"]["id"] == job["id"]]
        assert sorted(p["type"] for p in mine) == ["job.started", "job.succeeded"]
        succeeded = next(p for p in mine if p["type"] == "job.succeeded")
        assert succeeded["data"]["status"] == "succeeded"
        assert succeeded["data"]["url"].endswith(f"/v1/jobs/{job['id']}")
        assert succeeded["data"]["url"].startswith("http")
        assert succeeded["data"]["metrics"]["ratios"]["size"] < 1
        recorded = {d["event"]: d for d in deliveries(stack, job["id"])}
        assert recorded["job.succeeded"]["id"] == succeeded["id"]
        assert recorded["job.succeeded"]["status"] == "succeeded"
        assert [a["status_code"] for a in recorded["job.succeeded"]["attempts"]] == [204]
    # a tampered body fails verification
    headers, body = receiver.received("/ok")[0]
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body.replace(b'"job', b'"jab', 1), headers)


def test_failed_attempts_are_retried_with_the_same_id_and_recorded(
    stack: Stack, receiver: Receiver, model_id: str
) -> None:
    with stack.client() as client:
        flaky = submit(client, job_body(model_id, {"url": receiver.url + "/flaky"}))
        down = submit(client, job_body(model_id, {"url": receiver.url + "/down"}))
        for job in (flaky, down):
            poll(client, job["id"], timeout=120)
    (recovered,) = wait_until(lambda: settled(stack, flaky["id"], 1), 30, "the flaky receiver's delivery")
    (given_up,) = wait_until(lambda: settled(stack, down["id"], 1), 30, "the down receiver's delivery")

    assert recovered["status"] == "succeeded" and recovered["event"] == "job.succeeded"
    assert [a["number"] for a in recovered["attempts"]] == [1, 2]
    assert [a["status_code"] for a in recovered["attempts"]] == [500, 200]
    assert "500" in recovered["attempts"][0]["error"] and recovered["attempts"][1]["error"] is None
    sent = receiver.verified("/flaky")
    assert [p["id"] for p in sent] == [recovered["id"]] * 2  # the same webhook-id on the retry

    assert given_up["status"] == "failed" and given_up["finished_at"] is not None
    assert [a["status_code"] for a in given_up["attempts"]] == [500, 500, 500]  # WEBHOOK_MAX_ATTEMPTS=3
    started = [a["started_at"] for a in given_up["attempts"]]
    assert started == sorted(started)
    assert len({p["id"] for p in receiver.verified("/down")}) == 1


def test_python_client_submits_a_webhook_and_reads_its_deliveries(
    stack: Stack, receiver: Receiver, model_id: str
) -> None:
    assert stack.api is not None
    with Client(stack.api.url) as client:
        job = client.submit(model_id, [{"type": "quantize", "mode": "dynamic"}], webhook={"url": receiver.url + "/ok"})
        assert client.wait(job.id, timeout=120).status == JobStatus.SUCCEEDED
        wait_until(lambda: settled(stack, job.id, 1), 30, "the client job's delivery")
        (delivery,) = client.webhook_deliveries(job.id)
    assert delivery.event == WebhookEvent.SUCCEEDED and delivery.status == DeliveryStatus.SUCCEEDED
    assert [a.status_code for a in delivery.attempts] == [204]
    assert delivery.id in {p["id"] for p in receiver.verified("/ok")}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.2:9/hook", "loopback"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/hook", "private"),
        ("ftp://8.8.8.8/hook", "scheme"),
    ],
)
def test_internal_webhook_urls_are_refused(stack: Stack, model_id: str, url: str, expected: str) -> None:
    with stack.client() as client:
        response = client.post("/v1/jobs", json=job_body(model_id, {"url": url}))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "webhook_url_refused"
    assert expected in problem["detail"] and problem["detail"].startswith("webhook.url:")


def test_unknown_event_is_a_validation_error(stack: Stack, model_id: str, receiver: Receiver) -> None:
    with stack.client() as client:
        response = client.post(
            "/v1/jobs", json=job_body(model_id, {"url": receiver.url + "/ok", "events": ["job.finished"]})
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"][:3] == ["body", "webhook", "events"]
        missing = client.get("/v1/jobs/" + "0" * 32 + "/webhook-deliveries")
        assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"


def test_job_without_webhook_has_no_deliveries(stack: Stack, model_id: str) -> None:
    with stack.client() as client:
        job = submit(client, job_body(model_id, None))
        poll(client, job["id"], timeout=120)
    assert deliveries(stack, job["id"]) == []


@pytest.mark.slow
@pytest.mark.services
def test_exactly_once_with_two_workers_on_postgres_and_redis(
    tmp_path: Any, receiver: Receiver, digits_cnn: Any
) -> None:
    """Production layout: api + two workers on PostgreSQL and Redis. A job canceled while queued gets its
    job.canceled (published by the API). Two duplicate task messages for each delivery while it is in flight (the
    receiver takes 1 s), free workers to take them, and each job's `job.succeeded` is still sent once, in one
    attempt."""
    schema = postgres_schema()
    production = Stack(production_env(tmp_path / "data", schema, **FAST, **WEBHOOK_ENV), tmp_path)
    try:
        production.migrate()
        production.start_api("api")
        settings = stack_settings(production)
        with production.client() as client:
            model = upload(client, "/v1/models", digits_cnn.path)["id"]
            # no worker yet: this job is canceled while queued, by the API, which publishes its job.canceled
            canceled = submit(client, job_body(model, {"url": receiver.url + "/ok", "events": ["job.canceled"]}))
            assert client.post(f"/v1/jobs/{canceled['id']}/cancel").json()["status"] == JobStatus.CANCELED
            production.start_worker()
            production.start_worker()
            jobs = [submit(client, job_body(model, {"url": receiver.url + "/slow"})) for _ in range(3)]
            for job in jobs:
                assert poll(client, job["id"], timeout=120)["status"] == JobStatus.SUCCEEDED
                # at once, while its delivery is likely still in flight: two more messages for it
                (delivery,) = wait_until(lambda job=job: deliveries(production, job["id"]), 10, "the delivery")
                for _ in range(2):
                    publish_task(settings, webhooks.DELIVER_WEBHOOK, [delivery["id"]], webhook_queue(settings))
        for job in jobs:
            (delivery,) = wait_until(lambda job=job: settled(production, job["id"], 1), 30, "the delivery")
            assert delivery["status"] == "succeeded" and len(delivery["attempts"]) == 1
        (canceled_delivery,) = wait_until(lambda: settled(production, canceled["id"], 1), 30, "job.canceled")
        assert canceled_delivery["status"] == "succeeded" and canceled_delivery["event"] == "job.canceled"
        (sent_cancel,) = [p for p in receiver.verified("/ok") if p["data"]["id"] == canceled["id"]]
        assert sent_cancel["type"] == "job.canceled" and sent_cancel["data"]["status"] == "canceled"
        assert sent_cancel["data"]["metrics"] is None and sent_cancel["data"]["started_at"] is None
        time.sleep(3)  # the duplicate messages have been consumed
        sent = [p for p in receiver.verified("/slow") if p["data"]["id"] in {job["id"] for job in jobs}]
        assert sorted(p["data"]["id"] for p in sent) == sorted(job["id"] for job in jobs)
        assert {p["type"] for p in sent} == {"job.succeeded"}
    finally:
        production.stop()
        drop_postgres_schema(schema)


def test_where_a_jobs_deliveries_go() -> None:
    """The job's own webhook (checked), else the server's WEBHOOK_URL, else none; no secret: webhooks are off."""
    on = Settings(_env_file=None, webhook_secret=SECRET)  # type: ignore[call-arg]
    mine = webhooks.job_webhook(on, "https://8.8.8.8/hook", None, "https://api.example.com/v1/jobs/")
    assert mine == {
        "url": "https://8.8.8.8/hook",
        "events": ["job.succeeded", "job.failed", "job.canceled"],
        "job_url_prefix": "https://api.example.com/v1/jobs/",
    }
    assert webhooks.job_webhook(on, None, None, "/v1/jobs/") is None
    default = Settings(
        _env_file=None, webhook_secret=SECRET, webhook_url="https://hooks.example.com/x", webhook_events="job.failed"
    )  # type: ignore[call-arg]
    assert webhooks.job_webhook(default, None, None, "/v1/jobs/")["events"] == ["job.failed"]  # type: ignore[index]
    with pytest.raises(webhooks.WebhooksDisabledError, match="WEBHOOK_SECRET"):
        webhooks.job_webhook(Settings(_env_file=None), "https://8.8.8.8/hook", None, "/v1/jobs/")  # type: ignore[call-arg]
