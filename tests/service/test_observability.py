"""Observability on real processes: `/metrics` after a job ran, JSON logs of api and worker tied by request and job
id, X-Request-ID echoed; and the settings that turn metrics off or put them behind a token."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from service.settings import Settings
from tests.service.client import poll, upload
from tests.service.conftest import FAST, Stack

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`onnx-compress serve` (api + one worker, embedded) with JSON logs and uncached metrics reads."""
    root = tmp_path_factory.mktemp("observability")
    env = {"DATA_DIR": str(root / "data"), "LOG_FORMAT": "json", "METRICS_DB_CACHE_SECONDS": "0", **FAST}
    stack = Stack(env, root)
    stack.start_api("serve")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def finished_job(stack: Stack, digits_cnn) -> dict:
    """One quantize job submitted with a known X-Request-ID, run to the end."""
    request_id = f"obs-{uuid.uuid4().hex[:12]}"
    with stack.client() as client:
        model = upload(client, "/v1/models", digits_cnn.path)
        body = {"model_id": model["id"], "steps": [{"type": "quantize", "mode": "dynamic"}]}
        response = client.post("/v1/jobs", json=body, headers={"X-Request-ID": request_id})
        assert response.status_code == 202, response.text
        assert response.headers["x-request-id"] == request_id
        job = poll(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return {"id": job["id"], "request_id": request_id}


def scrape(client: httpx.Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_after_a_job(stack: Stack, finished_job: dict) -> None:
    with stack.client() as client:
        assert client.get(f"/v1/jobs/{finished_job['id']}").status_code == 200
        assert client.get("/v1/jobs/0123456789abcdef").status_code == 404
        text = client.get("/metrics").text
        samples = scrape(client)
    get_job = 'onnx_compress_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}'
    assert samples[get_job] >= 1
    assert samples['onnx_compress_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}'] == 1
    assert samples['onnx_compress_http_requests_total{method="POST",route="/v1/jobs",status="202"}'] == 1
    assert samples['onnx_compress_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"}'] >= 1
    assert samples['onnx_compress_jobs{status="succeeded"}'] == 1
    assert samples['onnx_compress_jobs{status="queued"}'] == 0
    assert samples['onnx_compress_step_duration_seconds_count{step="quantize"}'] == 1
    assert samples['onnx_compress_step_duration_seconds_sum{step="quantize"}'] > 0
    assert samples['onnx_compress_queue_messages{queue="compress"}'] == 0  # the embedded broker's queue, emptied
    assert samples["onnx_compress_database_up"] == 1
    # labels are route templates and counts: no job id, request id or raw path appears anywhere
    assert finished_job["id"] not in text and finished_job["request_id"] not in text
    assert "0123456789abcdef" not in text


def test_request_id_echoed_or_made(stack: Stack) -> None:
    with stack.client() as client:
        given = client.get("/livez", headers={"X-Request-ID": "abc.DEF-123"})
        made = client.get("/livez")
        refused = client.get("/livez", headers={"X-Request-ID": "not a token\twith spaces"})
    assert given.headers["x-request-id"] == "abc.DEF-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])


def log_lines(path: Path) -> list[dict]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line[:300]!r}")
    return parsed


def test_api_and_worker_lines_share_the_request_id(stack: Stack, finished_job: dict) -> None:
    assert stack.api is not None
    entries = log_lines(stack.api.log_path)  # serve: the api and its worker write to the same stream
    assert all({"ts", "level", "logger", "message", "service", "request_id", "job_id"} <= set(e) for e in entries)
    mine = [entry for entry in entries if entry["request_id"] == finished_job["request_id"]]
    api = [entry for entry in mine if entry["service"] == "api"]
    worker = [entry for entry in mine if entry["service"] == "worker"]
    assert any(e.get("route") == "/v1/jobs" and e.get("status") == 202 for e in api), api
    assert worker, "no worker line carries the submitting request's id"
    assert all(entry["job_id"] == finished_job["id"] for entry in worker)
    assert {entry["service"] for entry in entries} == {"api", "worker"}


def test_metrics_token_and_switch(tmp_path: Path) -> None:
    protected = Settings(data_dir=tmp_path / "a", metrics_token="s3cret")
    with TestClient(create_app(protected)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200 and "onnx_compress_jobs" in response.text
    with TestClient(create_app(Settings(data_dir=tmp_path / "b", metrics_enabled=False))) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/livez").headers["x-request-id"]  # request ids stay on
