"""The Python client (`onnx_compress.Client`) and the remote CLI (`onnx-compress submit`, `jobs ...`), against a
live `serve` that has an API key set (so every call below proves the key is sent), plus retry units."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from onnx_compress import ApiError, AuthError, Client
from onnx_compress.client import Job
from service.status import JobStatus
from tests.service.conftest import FAST, Stack

SPEC = {"steps": [{"type": "quantize", "mode": "dynamic"}]}
KEY = "client-test-key"


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`onnx-compress serve` (api + worker, SQLite) with API_KEYS set: a request without the key is a 401."""
    root = tmp_path_factory.mktemp("keyed")
    env = {"DATA_DIR": str(root / "data"), "API_KEYS": KEY, **FAST}
    env |= {"OUTBOUND_ALLOW_HTTP": "true", "OUTBOUND_ALLOWLIST": "127.0.0.1"}  # `submit <url>` from a local server
    stack = Stack(env, root)
    stack.start_api("serve")
    yield stack
    stack.stop()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"ONNX_COMPRESS_API_KEY", "ONNX_COMPRESS_SERVER"}}
    return {**env, **extra}


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
def test_client_flow(keyed_stack: Stack, digits_cnn, tmp_path: Path) -> None:
    eval_npz = tmp_path / "eval.npz"
    digits_cnn.write_npz(eval_npz, split="test")
    assert keyed_stack.api is not None
    seen: list[Job] = []
    with Client(keyed_stack.api.url, api_key=KEY) as client:
        model = client.upload_model(digits_cnn.path)
        assert model.size_bytes == digits_cnn.path.stat().st_size
        dataset = client.upload_dataset(eval_npz)
        assert dataset.n_samples == len(digits_cnn.y_test)
        job = client.submit(model.id, SPEC, datasets={"eval": dataset.id}, idempotency_key="client-flow")
        assert client.submit(model.id, SPEC["steps"], {"eval": dataset.id}, idempotency_key="client-flow").id == job.id
        followed = list(client.follow(job.id))  # server-sent events until the job has ended
        done = client.wait(job.id, progress=seen.append, timeout=300, poll=0.2)
        out = client.download(job.id, tmp_path / "out.onnx")
        metrics = client.metrics(job.id)
        events = client.events(job.id)
        later = client.events(job.id, after=events[0].id)
        resumed = list(client.follow(job.id, after=events[0].id))
        listed = client.list_jobs(status=JobStatus.SUCCEEDED)
        with pytest.raises(ApiError) as finished:
            client.cancel(job.id)
        with pytest.raises(ApiError) as uploads_gone:  # the job has ended: its uploads may go
            client.delete_model(model.id)
            client.delete_dataset(dataset.id)
            client.get_model(model.id)
        client.delete_job(job.id)
        with pytest.raises(ApiError) as deleted:
            client.get(job.id)

    assert done.status == JobStatus.SUCCEEDED and done.progress == 1.0
    assert seen and seen[-1].status == JobStatus.SUCCEEDED
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": digits_cnn.x_test[:4]})[0].shape[0] == 4
    assert metrics["job_id"] == job.id and metrics["output"]["size_bytes"] == out.stat().st_size
    assert events[0].kind == "queued" and len(later) == len(events) - 1
    assert [e.id for e in followed] == [e.id for e in events] and followed[-1].kind == "succeeded"
    assert [e.id for e in resumed] == [e.id for e in later]
    assert job.id in [item.id for item in listed.items]
    assert finished.value.status == 409 and finished.value.code == "job_finished"
    assert uploads_gone.value.status == 404 and uploads_gone.value.code == "model_not_found"
    assert deleted.value.status == 404 and deleted.value.code == "job_not_found"


@pytest.mark.slow
def test_lists_iterate_pages_and_deletes(keyed_stack: Stack, digits_cnn, tmp_path: Path) -> None:
    assert keyed_stack.api is not None
    with Client(keyed_stack.api.url, api_key=KEY) as client:
        models = [client.upload_model(digits_cnn.path).id for _ in range(3)]
        datasets = [client.upload_dataset(digits_cnn.write_npz(tmp_path / f"d{i}.npz", limit=8)).id for i in range(2)]
        first = client.list_models(limit=2)
        second = client.list_models(limit=2, cursor=first.next_cursor)
        every_model = [m.id for m in client.iter_models(page_size=1)]
        every_dataset = [d.id for d in client.iter_datasets(page_size=1)]
        assert client.list_datasets(limit=1).next_cursor is not None
        with pytest.raises(ApiError) as bad_cursor:
            client.list_models(cursor="not-a-cursor")
        client.delete_model(models[0])
        client.delete_dataset(datasets[0])
        after_delete = [m.id for m in client.iter_models()]
        with pytest.raises(ApiError) as gone:
            client.get_dataset(datasets[0])
    assert [m.id for m in first.items] == models[:0:-1] and first.next_cursor is not None
    assert second.items[0].id == models[0]
    assert every_model[:3] == models[::-1] and len(every_model) == len(set(every_model))
    assert every_dataset[:2] == datasets[::-1]
    assert bad_cursor.value.status == 422 and bad_cursor.value.code == "invalid_cursor"
    assert models[0] not in after_delete and models[1] in after_delete
    assert gone.value.status == 404 and gone.value.code == "dataset_not_found"

    # the same from the shell: `models list` pages like `jobs list`, `datasets delete`
    cli = [sys.executable, "-m", "onnx_compress"]
    server = ["--server", keyed_stack.api.url, "--api-key", KEY]
    listed = subprocess.run([*cli, "models", "list", "--limit", "1", *server], capture_output=True, text=True)
    assert listed.returncode == 0 and models[2] in listed.stdout and "digits" in listed.stdout
    assert "onnx-compress models list --cursor" in listed.stderr
    deleted = subprocess.run([*cli, "datasets", "delete", datasets[1], *server], capture_output=True, text=True)
    assert deleted.returncode == 0 and f"dataset {datasets[1]} deleted" in deleted.stderr


@pytest.mark.slow
def test_wrong_or_missing_key_is_a_clear_auth_error(keyed_stack: Stack) -> None:
    assert keyed_stack.api is not None
    for key in ("wrong-key", None):
        with Client(keyed_stack.api.url, api_key=key) as client, pytest.raises(AuthError) as caught:
            client.list_models()
        assert caught.value.status == 401 and caught.value.code == "unauthorized"
        assert "API key" in str(caught.value) and "api_key" in str(caught.value)
    with Client(keyed_stack.api.url, api_key=KEY) as client:
        assert client.list_jobs(limit=1).items is not None  # the right key passes
    env = cli_env(ONNX_COMPRESS_API_KEY="wrong-key")
    result = subprocess.run(
        [sys.executable, "-m", "onnx_compress", "jobs", "list", "--server", keyed_stack.api.url],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1 and "unauthorized" in result.stderr and "HTTP 401" in result.stderr


@pytest.mark.slow
def test_cli_submit_wait_output(keyed_stack: Stack, digits_cnn, tmp_path: Path) -> None:
    assert keyed_stack.api is not None
    server = ["--server", keyed_stack.api.url]
    env = cli_env(ONNX_COMPRESS_API_KEY=KEY)
    spec, calib = tmp_path / "spec.json", tmp_path / "calib.npz"
    spec.write_text(json.dumps(SPEC))
    digits_cnn.write_npz(calib, split="train", limit=64)
    out, metrics = tmp_path / "cli.onnx", tmp_path / "cli-metrics.json"
    args = [sys.executable, "-m", "onnx_compress", "submit", str(digits_cnn.path), "--spec", str(spec), *server]
    args += ["--calibration-data", str(calib), "--wait", "--output", str(out), "--metrics", str(metrics)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["output"] == str(out)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(metrics.read_text())["job_id"] == summary["job_id"]

    def jobs(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "onnx_compress", "jobs", *args, *server]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    got = jobs("get", summary["job_id"])
    assert got.returncode == 0 and json.loads(got.stdout)["status"] == "succeeded"
    again = tmp_path / "again.onnx"
    fetched = jobs("download", summary["job_id"], str(again))
    assert fetched.returncode == 0 and again.read_bytes() == out.read_bytes()
    canceled = jobs("cancel", summary["job_id"])
    assert canceled.returncode == 1 and "job_finished" in canceled.stderr

    with Client(keyed_stack.api.url, api_key=KEY) as client:  # a newer job, queued or running while listed
        newer = client.submit(client.upload_model(digits_cnn.path).id, SPEC).id
    # one job a page: the next page's command is printed on stderr, and --cursor gets that page
    page1 = jobs("list", "--limit", "1")
    assert page1.returncode == 0 and newer in page1.stdout and summary["job_id"] not in page1.stdout
    cursor = page1.stderr.split("--cursor", 1)[1].split()[0]
    page2 = jobs("list", "--limit", "1", "--cursor", cursor)
    assert page2.returncode == 0 and summary["job_id"] in page2.stdout
    deleted = jobs("delete", newer)  # canceled first if it is still queued or running
    assert deleted.returncode == 0 and "deleted" in deleted.stderr
    with Client(keyed_stack.api.url, api_key=KEY) as client, pytest.raises(ApiError) as missing:
        client.get(newer)
    assert missing.value.code == "job_not_found"


def test_cli_submit_from_urls(keyed_stack: Stack, digits_cnn, tmp_path: Path) -> None:
    """`submit <url> --calibration-data <url>`: the service imports both; a bad local path fails before any call."""
    assert keyed_stack.api is not None
    served = tmp_path / "served"
    served.mkdir()
    (served / "digits.onnx").write_bytes(digits_cnn.path.read_bytes())
    digits_cnn.write_npz(served / "calib.npz", split="train", limit=32)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    handler = functools.partial(QuietFiles, directory=str(served))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as files:
        threading.Thread(target=files.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{files.server_address[1]}"
        args = [sys.executable, "-m", "onnx_compress", "submit", f"{base}/digits.onnx", "--spec", str(spec)]
        args += ["--calibration-data", f"{base}/calib.npz", "--server", keyed_stack.api.url]
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=120, env=cli_env(ONNX_COMPRESS_API_KEY=KEY)
        )
        files.shutdown()
    assert result.returncode == 0, result.stderr[-4000:]
    job = json.loads(result.stdout)
    assert job["datasets"]["calibration"]
    with Client(keyed_stack.api.url, api_key=KEY) as client:
        assert client.wait(job["id"], timeout=300).status == JobStatus.SUCCEEDED
        model = next(m for m in client.iter_models() if m.id == job["model_id"])
    assert model.size_bytes == digits_cnn.path.stat().st_size
    missing = [sys.executable, "-m", "onnx_compress", "submit", str(tmp_path / "nope.onnx"), "--spec", str(spec)]
    refused = subprocess.run([*missing, "--server", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "neither an existing file nor" in refused.stderr


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.slow
def test_prefer_wait_long_polls_until_terminal_and_location(keyed_stack: Stack, digits_cnn) -> None:
    assert keyed_stack.api is not None
    with httpx.Client(base_url=keyed_stack.api.url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
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
