"""Cancellation and crash recovery against real worker processes on PostgreSQL + Redis."""

from __future__ import annotations

import time

import pytest

from service.status import EventKind, JobStatus
from tests.service.client import poll, submit, upload
from tests.service.conftest import Stack
from tests.service.stack import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.services]  # worker processes on PostgreSQL + Redis

# A job whose final latency measurement runs long enough to be interrupted mid-run: the measurement runs to its
# caps (it otherwise stops as soon as the ratio interval is narrow).
SLOW = {
    "LATENCY_RUNS": "20000",
    "LATENCY_TARGET_HALF_WIDTH": "0.000001",
    "LATENCY_MIN_SECONDS": "300",
    "LATENCY_MAX_SECONDS": "600",
    "JOB_LEASE_SECONDS": "4",
    "JOB_HEARTBEAT_SECONDS": "1",
}
QUICK = {"LATENCY_RUNS": "10", "JOB_LEASE_SECONDS": "4", "JOB_HEARTBEAT_SECONDS": "1"}


def dynamic_job(client, model_id: str) -> dict:
    return submit(client, {"model_id": model_id, "steps": [{"type": "quantize", "mode": "dynamic"}]})


def event_kinds(client, job_id: str) -> list[str]:
    return [event["kind"] for event in client.get(f"/v1/jobs/{job_id}/events").json()]


def test_canceled_queued_job_never_starts(production_backend: Stack, digits_cnn) -> None:
    with production_backend.client() as client:
        model_id = upload(client, "/v1/models", digits_cnn.path)["id"]
        doomed = dynamic_job(client, model_id)  # no worker is running: it stays queued
        assert client.post(f"/v1/jobs/{doomed['id']}/cancel").json()["status"] == JobStatus.CANCELED
        follower = dynamic_job(client, model_id)
        worker = production_backend.start_worker(**QUICK)
        try:
            assert poll(client, follower["id"], timeout=120)["status"] == JobStatus.SUCCEEDED
            wait_until(lambda: EventKind.SKIPPED in event_kinds(client, doomed["id"]), 30, "the canceled job's task")
        finally:
            worker.stop()
        job = client.get(f"/v1/jobs/{doomed['id']}").json()
        kinds = event_kinds(client, doomed["id"])
    assert job["status"] == JobStatus.CANCELED and job["started_at"] is None and job["attempt"] == 0
    assert EventKind.STARTED not in kinds


def test_cancel_running_job(production_backend: Stack, digits_cnn) -> None:
    worker = production_backend.start_worker(**SLOW)
    try:
        with production_backend.client() as client:
            model_id = upload(client, "/v1/models", digits_cnn.path)["id"]
            job = dynamic_job(client, model_id)
            poll(client, job["id"], timeout=60, until={JobStatus.RUNNING})
            response = client.post(f"/v1/jobs/{job['id']}/cancel")
            assert response.status_code == 200 and response.json()["cancel_requested"]
            job = poll(client, job["id"], timeout=60)
            kinds = event_kinds(client, job["id"])
            assert client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx").status_code == 404
    finally:
        worker.stop()
    assert job["status"] == JobStatus.CANCELED and job["error"]["code"] == "canceled"
    assert kinds[-1] == EventKind.CANCELED and EventKind.CANCEL_REQUESTED in kinds


def test_job_survives_sigkill_of_its_worker(production_backend: Stack, digits_cnn) -> None:
    first = production_backend.start_worker(**SLOW)
    with production_backend.client() as client:
        model_id = upload(client, "/v1/models", digits_cnn.path)["id"]
        job = dynamic_job(client, model_id)
        poll(client, job["id"], timeout=60, until={JobStatus.RUNNING})
        time.sleep(1.5)
        first.kill()  # SIGKILL to the worker and its pool children, mid-job
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == JobStatus.RUNNING
        second = production_backend.start_worker(**QUICK)
        try:
            done = poll(client, job["id"], timeout=120)
            time.sleep(3)  # any duplicate delivery would have run by now
            final = client.get(f"/v1/jobs/{job['id']}").json()
            kinds = event_kinds(client, job["id"])
        finally:
            second.stop()
    assert done["status"] == JobStatus.SUCCEEDED, done["error"]
    assert final["status"] == JobStatus.SUCCEEDED and final["attempt"] == 2
    assert kinds.count(EventKind.SUCCEEDED) == 1 and kinds.count(EventKind.STARTED) == 2 and EventKind.REQUEUED in kinds
    assert final["finished_at"] == done["finished_at"]
