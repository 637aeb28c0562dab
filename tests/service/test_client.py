"""The Python client (`onnx_compress.Client`) and the remote CLI (`onnx-compress submit`, `jobs ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from onnx_compress import ApiError, Client
from onnx_compress.client import Job
from service.status import JobStatus
from tests.service.conftest import Stack

SPEC = {"steps": [{"type": "quantize", "mode": "dynamic"}]}


def test_retries_503_after_retry_after_then_succeeds() -> None:
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"code": "broker_unavailable"})
        return httpx.Response(200, json={"id": "j1", "model_id": "m1", "status": "queued"})

    with Client("http://test", transport=httpx.MockTransport(answer)) as client:
        job = client.get("j1")
    assert job.id == "j1" and job.status == JobStatus.QUEUED
    assert calls == ["/v1/jobs/j1", "/v1/jobs/j1"]


def test_gives_up_after_bounded_attempts_and_raises_the_problem() -> None:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        problem = {"code": "too_many_requests", "detail": "slow down", "status": 429}
        return httpx.Response(429, headers={"Retry-After": "0"}, json=problem)

    client = Client("http://test", max_attempts=3, transport=httpx.MockTransport(answer))
    with client, pytest.raises(ApiError) as caught:
        client.list_jobs()
    assert len(calls) == 3
    assert (caught.value.status, caught.value.code, caught.value.detail) == (429, "too_many_requests", "slow down")


def test_problem_answer_raises_api_error_without_retry() -> None:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(404, json={"code": "job_not_found", "detail": "job 'x' not found", "status": 404})

    with Client("http://test", transport=httpx.MockTransport(answer)) as client, pytest.raises(ApiError) as caught:
        client.cancel("x")
    assert len(calls) == 1 and caught.value.code == "job_not_found" and caught.value.status == 404


@pytest.mark.slow
def test_client_flow(embedded_stack: Stack, digits_cnn, tmp_path: Path) -> None:
    eval_npz = tmp_path / "eval.npz"
    digits_cnn.write_npz(eval_npz, split="test")
    assert embedded_stack.api is not None
    seen: list[Job] = []
    with Client(embedded_stack.api.url) as client:
        model = client.upload_model(digits_cnn.path)
        assert model.size_bytes == digits_cnn.path.stat().st_size
        dataset = client.upload_dataset(eval_npz)
        assert dataset.n_samples == len(digits_cnn.y_test)
        job = client.submit(model.id, SPEC, datasets={"eval": dataset.id}, idempotency_key="client-flow")
        assert client.submit(model.id, SPEC["steps"], {"eval": dataset.id}, idempotency_key="client-flow").id == job.id
        done = client.wait(job.id, progress=seen.append, timeout=300, poll=0.2)
        out = client.download(job.id, tmp_path / "out.onnx")
        metrics = client.metrics(job.id)
        events = client.events(job.id)
        later = client.events(job.id, after=events[0].id)
        listed = client.list_jobs(status=JobStatus.SUCCEEDED)
        with pytest.raises(ApiError) as finished:
            client.cancel(job.id)

    assert done.status == JobStatus.SUCCEEDED and done.progress == 1.0
    assert seen and seen[-1].status == JobStatus.SUCCEEDED
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": digits_cnn.x_test[:4]})[0].shape[0] == 4
    assert metrics["job_id"] == job.id and metrics["output"]["size_bytes"] == out.stat().st_size
    assert events[0].kind == "queued" and len(later) == len(events) - 1
    assert job.id in [item.id for item in listed.items]
    assert finished.value.status == 409 and finished.value.code == "job_finished"


@pytest.mark.slow
def test_cli_submit_wait_output(embedded_stack: Stack, digits_cnn, tmp_path: Path) -> None:
    assert embedded_stack.api is not None
    spec, calib = tmp_path / "spec.json", tmp_path / "calib.npz"
    spec.write_text(json.dumps(SPEC))
    digits_cnn.write_npz(calib, split="train", limit=64)
    out, metrics = tmp_path / "cli.onnx", tmp_path / "cli-metrics.json"
    args = [sys.executable, "-m", "onnx_compress", "submit", str(digits_cnn.path), "--spec", str(spec)]
    args += ["--server", embedded_stack.api.url, "--calibration-data", str(calib), "--wait"]
    args += ["--output", str(out), "--metrics", str(metrics)]
    env = {k: v for k, v in os.environ.items() if k != "ONNX_COMPRESS_API_KEY"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["output"] == str(out)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(metrics.read_text())["job_id"] == summary["job_id"]

    jobs = [sys.executable, "-m", "onnx_compress", "jobs"]
    got = subprocess.run([*jobs, "get", summary["job_id"], "--server", embedded_stack.api.url], capture_output=True)
    assert got.returncode == 0 and json.loads(got.stdout)["status"] == "succeeded"
    listed = subprocess.run([*jobs, "list", "--server", embedded_stack.api.url], capture_output=True, text=True)
    assert listed.returncode == 0 and summary["job_id"] in listed.stdout
    again = tmp_path / "again.onnx"
    fetched = subprocess.run(
        [*jobs, "download", summary["job_id"], str(again), "--server", embedded_stack.api.url], capture_output=True
    )
    assert fetched.returncode == 0 and again.read_bytes() == out.read_bytes()
    canceled = subprocess.run(
        [*jobs, "cancel", summary["job_id"], "--server", embedded_stack.api.url], capture_output=True, text=True
    )
    assert canceled.returncode == 1 and "job_finished" in canceled.stderr


@pytest.mark.slow
def test_prefer_wait_long_polls_until_terminal_and_location(embedded_stack: Stack, digits_cnn) -> None:
    with embedded_stack.client() as http:
        with digits_cnn.path.open("rb") as handle:
            uploaded = http.post("/v1/models", files={"file": ("m.onnx", handle, "application/octet-stream")})
        model_id = uploaded.json()["id"]
        assert uploaded.status_code == 201 and uploaded.headers["Location"] == f"/v1/models/{model_id}"
        created = http.post("/v1/jobs", json={"model_id": model_id, **SPEC})
        assert created.status_code == 202 and created.headers["Location"] == f"/v1/jobs/{created.json()['id']}"
        job_url = created.headers["Location"]
        status = created.json()["status"]
        for _ in range(20):  # each answer comes when the job ended or after the (capped) wait
            waited = http.get(job_url, headers={"Prefer": "wait=30"}, timeout=120)
            assert waited.status_code == 200 and waited.headers["Preference-Applied"] == "wait=30"
            status = waited.json()["status"]
            if status in {"succeeded", "failed", "canceled"}:
                break
        assert status == "succeeded"
        plain = http.get(job_url)
        assert "Preference-Applied" not in plain.headers
        assert http.get(job_url, headers={"Prefer": "wait=100000"}).headers["Preference-Applied"] == "wait=60"


def test_api_key_is_sent_as_bearer_token() -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"items": [], "next_cursor": None})

    with Client("http://test/", api_key="tok", transport=httpx.MockTransport(answer)) as client:
        assert client.list_jobs().items == []
    assert seen == ["Bearer tok"]
