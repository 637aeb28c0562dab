"""Issue 11 finding 3: tenant isolation, against the app in-process on SQLite.

Each key in API_KEYS is its own tenant; another tenant's model, dataset or job is a 404 everywhere (read, list,
events, artifacts, report, cancel, or named in a job); idempotency keys are per tenant; ADMIN_API_KEYS see all;
keys made by `onnx-compress keys create` work until revoked and are stored as hashes only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from app.main import create_app
from onnx_compress.cli import cli
from service.db import get_engine
from service.settings import Settings, get_settings
from service.tenants import hash_token

KEY_A, KEY_B, ADMIN = "keyA-secret", "keyB-secret", "admin-secret"
SAMPLE_SHAPE = (1, 8, 8)  # digits_cnn: input `input` [batch, 1, 8, 8] float32


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", api_keys=[KEY_A, KEY_B], admin_api_keys=[ADMIN])


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def upload(client: TestClient, key: str, route: str, name: str, content: bytes) -> str:
    response = client.post(route, files={"file": (name, content, "application/octet-stream")}, headers=auth(key))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def job_body(model_id: str, dataset_id: str) -> dict:
    return {
        "model_id": model_id,
        "datasets": {"calibration": dataset_id},
        "steps": [{"type": "quantize", "mode": "dynamic"}],
    }


@pytest.fixture
def owned_by_a(client: TestClient, digits_cnn) -> dict[str, str]:
    """keyA's model, dataset and (queued) job."""
    model_id = upload(client, KEY_A, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
    data = np.random.default_rng(0).random((4, *SAMPLE_SHAPE), dtype=np.float32)
    dataset_id = upload(client, KEY_A, "/v1/datasets", "calib.npz", npz(input=data))
    response = client.post("/v1/jobs", json=job_body(model_id, dataset_id), headers=auth(KEY_A))
    assert response.status_code == 202, response.text
    return {"model": model_id, "dataset": dataset_id, "job": response.json()["id"]}


def assert_not_found(response, code: str | None = None) -> None:
    assert response.status_code == 404, response.text
    if code:
        assert response.json()["code"] == code, response.text


def test_another_tenant_sees_nothing(client: TestClient, owned_by_a: dict[str, str]) -> None:
    job = owned_by_a["job"]
    reads = [
        f"/v1/models/{owned_by_a['model']}",
        f"/v1/datasets/{owned_by_a['dataset']}",
        f"/v1/jobs/{job}",
        f"/v1/jobs/{job}/events",
        f"/v1/jobs/{job}/report",
        f"/v1/jobs/{job}/artifacts/model.onnx",
        f"/v1/jobs/{job}/artifacts/metrics.json",
    ]
    for route in reads:
        assert client.get(route, headers=auth(KEY_A)).status_code in {200, 404}  # keyA's own (artifacts: not ready)
        assert_not_found(client.get(route, headers=auth(KEY_B)))
    # the artifact 404 for keyB is "no such job", not "not ready": the job's existence is not confirmed
    assert_not_found(client.get(f"/v1/jobs/{job}/artifacts/model.onnx", headers=auth(KEY_B)), "job_not_found")
    assert client.get(f"/v1/jobs/{job}/events", headers=auth(KEY_A)).json()  # keyA has its events

    assert [j["id"] for j in client.get("/v1/jobs", headers=auth(KEY_A)).json()["items"]] == [job]
    assert client.get("/v1/jobs", headers=auth(KEY_B)).json()["items"] == []
    assert client.get("/v1/jobs?status=queued", headers=auth(KEY_B)).json()["items"] == []

    assert_not_found(client.post(f"/v1/jobs/{job}/cancel", headers=auth(KEY_B)), "job_not_found")
    assert client.get(f"/v1/jobs/{job}", headers=auth(KEY_A)).json()["cancel_requested"] is False
    assert client.post(f"/v1/jobs/{job}/cancel", headers=auth(KEY_A)).status_code == 200


def test_another_tenants_ids_cannot_be_named_in_a_job(client: TestClient, owned_by_a: dict, digits_cnn) -> None:
    model_a, dataset_a = owned_by_a["model"], owned_by_a["dataset"]
    response = client.post("/v1/jobs", json=job_body(model_a, dataset_a), headers=auth(KEY_B))
    assert response.status_code == 422 and model_a in response.json()["detail"], response.text

    model_b = upload(client, KEY_B, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
    response = client.post("/v1/jobs", json=job_body(model_b, dataset_a), headers=auth(KEY_B))
    assert response.status_code == 422 and dataset_a in response.json()["detail"], response.text

    distill = {"type": "distill", "student": model_a, "epochs": 1}
    body = {"model_id": model_b, "datasets": {"train": None}, "steps": [distill]}
    response = client.post("/v1/jobs", json=body, headers=auth(KEY_B))
    assert response.status_code == 422 and model_a in response.json()["detail"], response.text


def test_idempotency_keys_are_per_tenant(client: TestClient, digits_cnn) -> None:
    data = np.zeros((2, *SAMPLE_SHAPE), dtype=np.float32)
    jobs = {}
    for key in (KEY_A, KEY_B):
        model_id = upload(client, key, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
        dataset_id = upload(client, key, "/v1/datasets", "c.npz", npz(input=data))
        headers = {**auth(key), "Idempotency-Key": "same-key"}
        first = client.post("/v1/jobs", json=job_body(model_id, dataset_id), headers=headers)
        again = client.post("/v1/jobs", json=job_body(model_id, dataset_id), headers=headers)
        assert first.status_code == again.status_code == 202, first.text
        assert again.json()["id"] == first.json()["id"] and again.headers.get("Idempotent-Replayed") == "true"
        jobs[key] = first.json()["id"]
    assert jobs[KEY_A] != jobs[KEY_B]


def test_admin_sees_every_tenant(client: TestClient, owned_by_a: dict[str, str]) -> None:
    for route in (f"/v1/models/{owned_by_a['model']}", f"/v1/jobs/{owned_by_a['job']}/report"):
        assert client.get(route, headers=auth(ADMIN)).status_code == 200
    listed = client.get("/v1/jobs", headers=auth(ADMIN)).json()["items"]
    assert owned_by_a["job"] in {job["id"] for job in listed}


def test_unknown_and_missing_keys_are_401(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers=auth("keyC")).status_code == 401


def run_cli(settings: Settings, *args: str) -> str:
    """`onnx-compress ...` in-process, on the test's data directory."""
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, list(args), env={"DATA_DIR": str(settings.data_dir)})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("api_keys", [[], [KEY_A]], ids=["only-db-keys", "with-API_KEYS"])
def test_cli_keys_work_until_revoked_and_are_stored_hashed(tmp_path: Path, digits_cnn, api_keys: list[str]) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_keys=api_keys)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/jobs").status_code == (401 if api_keys else 200)  # no key anywhere: auth off
        run_cli(settings, "tenants", "create", "acme")
        token = run_cli(settings, "keys", "create", "--tenant", "acme").strip().splitlines()[-1]
        assert client.get("/v1/jobs").status_code == 401  # a key exists now: auth is on

        model_id = upload(client, token, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
        assert client.get(f"/v1/models/{model_id}", headers={"X-API-Key": token}).status_code == 200
        if api_keys:
            assert_not_found(client.get(f"/v1/models/{model_id}", headers=auth(KEY_A)))

        with get_engine(settings).connect() as connection:
            stored = [tuple(row) for row in connection.execute(text("SELECT * FROM api_keys"))]
        assert stored and not any(token in str(value) for row in stored for value in row)
        assert any(hash_token(token.encode()) in row for row in stored)

        listing = run_cli(settings, "keys", "list")
        key_id = next(line.split("\t")[0] for line in listing.splitlines() if "\tacme\t" in line)
        assert token not in listing
        run_cli(settings, "keys", "revoke", key_id)
        assert client.get(f"/v1/models/{model_id}", headers=auth(token)).status_code == 401
        assert client.get("/v1/jobs").status_code == 401  # revoking the last key does not turn auth off
