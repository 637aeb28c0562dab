"""Lifecycle against real processes (api + Celery worker on PostgreSQL and Redis, artifacts in S3 through moto's
server): DELETE of jobs, models and datasets (files gone from the bucket, 409 while a queued or running job uses
an upload, another tenant gets 404), the models/datasets lists, and retention (rows aged in the database are
deleted by the worker's sweep, recent ones and uploads an active job needs are kept).

The module runs in order: first with no worker (submitted jobs stay queued), then a worker is started.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, update

from service import lifecycle, retention
from service.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from service.db import session_scope
from service.orm import DatasetRecord, Job, JobEvent, ModelRecord, new_id, utcnow
from service.settings import Settings
from service.status import JobStatus
from service.tenants import hash_token, settings_tenant_id
from tests.service.client import poll
from tests.service.conftest import FAST, Stack
from tests.service.s3 import S3_ENV, moto_s3
from tests.service.stack import drop_postgres_schema, postgres_schema, production_env, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

KEY_A, KEY_B = "lifecycle-key-a", "lifecycle-key-b"
BUCKET, PREFIX = "lifecycle", "t"
QUANTIZE = [{"type": "quantize", "mode": "dynamic"}]
OLD = timedelta(days=40)  # past the default 30-day retentions


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("lifecycle")
    schema = postgres_schema()
    s3 = {"ARTIFACT_STORE": "s3", "S3_BUCKET": BUCKET, "S3_PREFIX": PREFIX, "S3_ENDPOINT_URL": s3_endpoint}
    env = production_env(root / "data", schema, **FAST, **S3_ENV, **s3, API_KEYS=f"{KEY_A},{KEY_B}")
    # the worker's watcher passes every 2 s (a quarter of QUEUED_REDELIVER_SECONDS) and sweeps retention each time
    env |= {"QUEUED_REDELIVER_SECONDS": "8", "RETENTION_SWEEP_SECONDS": "1", "DELETE_WAIT_SECONDS": "20"}
    stack = Stack(env, root)
    try:
        stack.migrate()
        stack.start_api("api")
        yield stack
    finally:
        stack.stop()
        drop_postgres_schema(schema)


@pytest.fixture(scope="module")
def settings(stack: Stack) -> Settings:
    """The stack's own settings (database, bucket), for reading and aging rows and for a sweep run here."""
    return Settings(
        **{name.lower(): value for name, value in stack.env.items() if name.lower() in Settings.model_fields}
    )


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Stack:
    stack.start_worker()
    return stack


def client(stack: Stack, key: str) -> httpx.Client:
    assert stack.api is not None
    return httpx.Client(base_url=stack.api.url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def bucket_keys(endpoint: str) -> set[str]:
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    return {item["Key"].removeprefix(f"{PREFIX}/") for item in listed.get("Contents", [])}


def upload_model(http: httpx.Client, path: Path) -> str:
    response = http.post("/v1/models", files={"file": ("digits.onnx", path.read_bytes(), "application/octet-stream")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload_dataset(http: httpx.Client, n: int = 8) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, input=np.random.default_rng(n).random((n, 1, 8, 8), dtype=np.float32))
    response = http.post("/v1/datasets", files={"file": ("data.npz", buffer.getvalue(), "application/octet-stream")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def submit(http: httpx.Client, model_id: str, steps: list[dict[str, Any]], **datasets: str) -> dict[str, Any]:
    response = http.post("/v1/jobs", json={"model_id": model_id, "steps": steps, "datasets": datasets})
    assert response.status_code == 202, response.text
    return response.json()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    return body


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_stores_list_and_delete_folders(kind: str, s3_endpoint: str, tmp_path: Path) -> None:
    """The two store operations deletes and the retention sweep build on, on both stores."""
    store: ArtifactStore
    if kind == "local":
        store = LocalArtifactStore(tmp_path / "root")
    else:
        store = S3ArtifactStore(BUCKET, prefix=f"unit-{tmp_path.name}", endpoint_url=s3_endpoint)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    for key in ("jobs/j1/model.onnx", "jobs/j1/metrics.json", "jobs/j2/model.onnx", "models/j1.onnx"):
        store.put_file(key, src)
    assert list(store.list_folders("jobs")) == ["j1", "j2"] and list(store.list_folders("nothing")) == []
    store.delete_prefix("jobs/j1")
    assert not store.exists("jobs/j1/model.onnx") and not store.exists("jobs/j1/metrics.json")
    assert store.exists("jobs/j2/model.onnx") and store.exists("models/j1.onnx")  # only that folder
    assert list(store.list_folders("jobs")) == ["j2"]
    store.delete_prefix("jobs/j1")  # a missing folder is not an error
    with pytest.raises(ValueError, match="root"):
        store.delete_prefix("/")


def test_uploads_in_use_are_409_until_the_job_is_deleted(stack: Stack, s3_endpoint: str, digits_cnn) -> None:
    with client(stack, KEY_A) as a, client(stack, KEY_B) as b:
        model_id, dataset_id = upload_model(a, digits_cnn.path), upload_dataset(a)
        job = submit(a, model_id, QUANTIZE, calibration=dataset_id)  # no worker yet: it stays queued
        assert {f"models/{model_id}.onnx", f"datasets/{dataset_id}.npz"} <= bucket_keys(s3_endpoint)

        body = problem(a.delete(f"/v1/models/{model_id}"), 409, "model_in_use")
        assert job["id"] in body["detail"] and "queued" in body["detail"]
        assert job["id"] in problem(a.delete(f"/v1/datasets/{dataset_id}"), 409, "dataset_in_use")["detail"]
        # another tenant: nothing exists (404), nothing is deleted
        problem(b.delete(f"/v1/models/{model_id}"), 404, "model_not_found")
        problem(b.delete(f"/v1/datasets/{dataset_id}"), 404, "dataset_not_found")
        problem(b.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
        assert a.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"

        # deleting the queued job cancels it (it never runs) and removes it
        assert a.delete(f"/v1/jobs/{job['id']}").status_code == 204
        problem(a.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
        problem(a.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")

        # now free: the uploads go, files and records
        assert a.delete(f"/v1/models/{model_id}").status_code == 204
        assert a.delete(f"/v1/datasets/{dataset_id}").status_code == 204
        problem(a.get(f"/v1/models/{model_id}"), 404, "model_not_found")
        problem(a.get(f"/v1/datasets/{dataset_id}"), 404, "dataset_not_found")
        problem(a.delete(f"/v1/models/{model_id}"), 404, "model_not_found")
    keys = bucket_keys(s3_endpoint)
    assert f"models/{model_id}.onnx" not in keys and f"datasets/{dataset_id}.npz" not in keys


def test_delete_waits_for_a_job_being_created_with_the_upload(stack: Stack, settings: Settings, digits_cnn) -> None:
    """A job being created holds its uploads (as POST /v1/jobs does between its checks and its commit): a delete
    that comes meanwhile waits, then sees the job and answers 409 instead of deleting the model under it."""
    with client(stack, KEY_A) as a:
        model_id = upload_model(a, digits_cnn.path)
        owner = settings_tenant_id(hash_token(KEY_A.encode()))
        job = Job(id=new_id(), model_id=model_id, spec={"steps": QUANTIZE}, datasets={}, steps=[], owner_id=owner)
        answers: list[httpx.Response] = []
        with session_scope(settings) as creating:
            lifecycle.hold_uploads(creating, [model_id], [])
            creating.add(job)
            creating.flush()
            deleting = threading.Thread(target=lambda: answers.append(a.delete(f"/v1/models/{model_id}")))
            deleting.start()
            deleting.join(timeout=2)
            blocked = deleting.is_alive()
            creating.commit()
        deleting.join(timeout=60)
        assert blocked and answers, "the delete did not wait for the job being created"
        assert job.id in problem(answers[0], 409, "model_in_use")["detail"]
        assert a.delete(f"/v1/jobs/{job.id}").status_code == 204


def test_lists_page_with_a_cursor_per_tenant(stack: Stack, digits_cnn) -> None:
    with client(stack, KEY_A) as a, client(stack, KEY_B) as b:
        mine = [upload_model(b, digits_cnn.path) for _ in range(3)]
        datasets = [upload_dataset(b, n) for n in (4, 5, 6)]
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = b.get("/v1/models", params=params).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen[:3] == mine[::-1] and len(seen) == len(set(seen))  # newest first, no repeats
        listed = b.get("/v1/datasets", params={"limit": 100}).json()
        assert [item["id"] for item in listed["items"]][:3] == datasets[::-1] and listed["next_cursor"] is None
        assert listed["items"][0]["n_samples"] == 6
        # tenant A sees none of B's
        assert not {item["id"] for item in a.get("/v1/models", params={"limit": 100}).json()["items"]} & set(mine)
        assert not {item["id"] for item in a.get("/v1/datasets").json()["items"]} & set(datasets)
        problem(b.get("/v1/models", params={"cursor": "not-a-cursor"}), 422, "invalid_cursor")


def age(settings: Settings, *, jobs: list[str] = (), models: list[str] = (), datasets: list[str] = ()) -> None:
    """Move rows' timestamps 40 days back, as if made then."""
    then = utcnow() - OLD
    with session_scope(settings) as session:
        if jobs:
            session.execute(update(Job).where(Job.id.in_(jobs)).values(created_at=then, finished_at=then))
        for kind, ids in ((ModelRecord, models), (DatasetRecord, datasets)):
            if ids:
                session.execute(update(kind).where(kind.id.in_(ids)).values(created_at=then))
        session.commit()


def test_retention_keeps_uploads_a_queued_job_needs(stack: Stack, settings: Settings, digits_cnn) -> None:
    """The sweep itself (service/retention.py) on the stack's database and bucket, while no worker runs."""
    with client(stack, KEY_A) as a:
        used, unused, recent = (upload_model(a, digits_cnn.path) for _ in range(3))
        job = submit(a, used, QUANTIZE)
        age(settings, models=[used, unused])
        report = retention.sweep(settings)
        assert unused in report.models and used not in report.models and recent not in report.models
        assert a.get(f"/v1/models/{used}").status_code == 200 and a.get(f"/v1/models/{recent}").status_code == 200
        problem(a.get(f"/v1/models/{unused}"), 404, "model_not_found")
        assert a.delete(f"/v1/jobs/{job['id']}").status_code == 204  # leaves no queued job for the worker


def test_delete_succeeded_job_removes_artifacts_and_rows(
    worker: Stack, settings: Settings, s3_endpoint: str, digits_cnn
) -> None:
    with client(worker, KEY_A) as a, client(worker, KEY_B) as b:
        model_id = upload_model(a, digits_cnn.path)
        job = poll(a, submit(a, model_id, QUANTIZE)["id"], timeout=180)
        assert job["status"] == "succeeded", job["error"]
        artifacts = {f"jobs/{job['id']}/model.onnx", f"jobs/{job['id']}/metrics.json"}
        assert artifacts <= bucket_keys(s3_endpoint)
        problem(b.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
        assert a.delete(f"/v1/jobs/{job['id']}").status_code == 204
        problem(a.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx"), 404, "job_not_found")
        problem(a.get(f"/v1/jobs/{job['id']}/events"), 404, "job_not_found")
        # the model a finished job named can go; the job (deleted) or its report never needed it again
        assert a.delete(f"/v1/models/{model_id}").status_code == 204
    assert not artifacts & bucket_keys(s3_endpoint)
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).where(JobEvent.job_id == job["id"])) == 0
        assert session.get(Job, job["id"]) is None


def test_delete_running_job_stops_it_first(worker: Stack, settings: Settings, digits_cnn, tmp_path: Path) -> None:
    train = digits_cnn.write_npz(tmp_path / "train.npz", split="train")
    distill = [{"type": "distill", "epochs": 200, "max_seconds": 120}]  # runs far longer than the test waits
    with client(worker, KEY_A) as a:
        model_id = upload_model(a, digits_cnn.path)
        response = a.post("/v1/datasets", files={"file": ("train.npz", train.read_bytes(), "application/octet-stream")})
        job = submit(a, model_id, distill, train=response.json()["id"])
        poll(a, job["id"], timeout=120, until={"running"})
        wait_until(lambda: "distill" in (a.get(f"/v1/jobs/{job['id']}").json()["stage"] or ""), 120, "distilling")
        problem(a.delete(f"/v1/models/{model_id}"), 409, "model_in_use")
        started = time.monotonic()
        assert a.delete(f"/v1/jobs/{job['id']}").status_code == 204
        waited = time.monotonic() - started
        problem(a.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
        # the worker stopped it (canceled, then purged) and is free: the next job runs
        follow = poll(a, submit(a, model_id, QUANTIZE)["id"], timeout=180)
        assert follow["status"] == "succeeded", follow["error"]
    assert waited < 60  # DELETE_WAIT_SECONDS=20 bounds the wait; the job itself would run 120 s
    wait_until(lambda: not (settings.work_dir / job["id"]).exists(), 30, "the job's work folder removed")


def test_worker_sweep_deletes_aged_jobs_and_uploads(
    worker: Stack, settings: Settings, s3_endpoint: str, digits_cnn
) -> None:
    with client(worker, KEY_A) as a:
        model_old, model_new = upload_model(a, digits_cnn.path), upload_model(a, digits_cnn.path)
        old_job = poll(a, submit(a, model_old, QUANTIZE)["id"], timeout=180)
        new_job = poll(a, submit(a, model_new, QUANTIZE)["id"], timeout=180)
        assert old_job["status"] == new_job["status"] == "succeeded"
        dataset_old = upload_dataset(a)
        age(settings, jobs=[old_job["id"]], models=[model_old], datasets=[dataset_old])
        orphan = f"{PREFIX}/jobs/{new_id()}/model.onnx"  # stored by a worker just as its job was deleted
        boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=BUCKET, Key=orphan, Body=b"x")

        def swept() -> bool:
            return a.get(f"/v1/jobs/{old_job['id']}").status_code == 404 and all(
                a.get(url).status_code == 404 for url in (f"/v1/models/{model_old}", f"/v1/datasets/{dataset_old}")
            )

        wait_until(swept, 60, "the worker's retention sweep")
        wait_until(lambda: orphan.removeprefix(f"{PREFIX}/") not in bucket_keys(s3_endpoint), 30, "orphan removed")
        assert a.get(f"/v1/jobs/{new_job['id']}").json()["status"] == JobStatus.SUCCEEDED
        assert a.get(f"/v1/models/{model_new}").status_code == 200
    keys = bucket_keys(s3_endpoint)
    assert f"jobs/{new_job['id']}/model.onnx" in keys and f"models/{model_new}.onnx" in keys
    assert not {k for k in keys if old_job["id"] in k or model_old in k or dataset_old in k}
