"""Bad input gets a clear 4xx and never corrupts anything; the API's own contract (paging, idempotency, auth)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from service.settings import Settings
from service.status import JobStatus


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_model_bytes=400_000, max_dataset_bytes=2_000_000)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post_file(client: TestClient, route: str, name: str, content: bytes, **headers: str):
    return client.post(route, files={"file": (name, content, "application/octet-stream")}, headers=headers)


@pytest.fixture
def model_id(client: TestClient, digits_cnn) -> str:
    response = post_file(client, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def job_body(model_id: str, **datasets: str) -> dict:
    return {"model_id": model_id, "steps": [{"type": "quantize", "mode": "dynamic"}], "datasets": datasets}


def test_random_bytes_are_not_a_model(client: TestClient) -> None:
    response = post_file(client, "/v1/models", "noise.onnx", np.random.default_rng(0).bytes(5000))
    assert response.status_code == 422
    assert "not a valid ONNX model" in response.json()["detail"]


def test_truncated_model(client: TestClient, digits_cnn) -> None:
    content = digits_cnn.path.read_bytes()
    response = post_file(client, "/v1/models", "cut.onnx", content[: len(content) // 2])
    assert response.status_code == 422
    assert "not a valid ONNX model" in response.json()["detail"]


def test_model_over_the_size_limit(client: TestClient, settings: Settings) -> None:
    response = post_file(client, "/v1/models", "big.onnx", b"\0" * (settings.max_model_bytes + 10))
    assert response.status_code == 413
    assert "MAX_MODEL_BYTES" in response.json()["detail"]
    assert not any((settings.data_dir / "incoming").iterdir())  # the partial upload is gone


def test_upload_without_file_field(client: TestClient) -> None:
    response = client.post("/v1/models", files={"model": ("m.onnx", b"abc")})
    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]


def test_upload_not_multipart(client: TestClient) -> None:
    response = client.post("/v1/models", content=b"abc", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 422


def test_model_metadata_round_trip(client: TestClient, model_id: str, digits_cnn) -> None:
    body = client.get(f"/v1/models/{model_id}").json()
    assert body["outputs"][0]["name"] == "logits"
    assert client.get("/v1/models/nope").status_code == 404


def test_unknown_step_type_names_the_valid_ones(client: TestClient, model_id: str) -> None:
    response = client.post("/v1/jobs", json={"model_id": model_id, "steps": [{"type": "quantise", "mode": "dynamic"}]})
    assert response.status_code == 422
    assert "quantize" in str(response.json()["detail"])


def test_unknown_step_field(client: TestClient, model_id: str) -> None:
    body = {"model_id": model_id, "steps": [{"type": "quantize", "mode": "dynamic", "bitz": 3}]}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert "bitz" in str(response.json()["detail"])


def test_empty_steps_and_unknown_model(client: TestClient, model_id: str) -> None:
    assert client.post("/v1/jobs", json={"model_id": model_id, "steps": []}).status_code == 422
    response = client.post("/v1/jobs", json=job_body("does-not-exist"))
    assert response.status_code == 422 and "not found" in response.json()["detail"]


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/jobs/nope/events").status_code == 404
    assert client.post("/v1/jobs/nope/cancel").status_code == 404
    assert client.get("/v1/jobs/nope/artifacts/model.onnx").status_code == 404


def npz_bytes(tmp_path: Path, **arrays: np.ndarray) -> bytes:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


def test_dataset_that_does_not_match_the_model(client: TestClient, model_id: str, tmp_path: Path) -> None:
    wrong_name = npz_bytes(tmp_path, image=np.zeros((4, 1, 8, 8), np.float32))
    dataset = post_file(client, "/v1/datasets", "d.npz", wrong_name).json()
    response = client.post("/v1/jobs", json=job_body(model_id, eval=dataset["id"]))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "missing arrays for model inputs ['input']" in detail and "'image'" in detail

    wrong_shape = npz_bytes(tmp_path, input=np.zeros((4, 1, 9, 8), np.float32))
    dataset = post_file(client, "/v1/datasets", "d.npz", wrong_shape).json()
    response = client.post("/v1/jobs", json=job_body(model_id, calibration=dataset["id"]))
    assert response.status_code == 422
    assert "dimension 2 should be 8, got 9" in response.json()["detail"]


def test_dataset_uploads(client: TestClient, tmp_path: Path, settings: Settings) -> None:
    response = post_file(client, "/v1/datasets", "d.npz", b"not a zip")
    assert response.status_code == 422 and "npz" in response.json()["detail"]
    ragged = npz_bytes(tmp_path, a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    response = post_file(client, "/v1/datasets", "d.npz", ragged)
    assert response.status_code == 422 and "disagree" in response.json()["detail"]
    response = post_file(client, "/v1/datasets", "d.npz", b"\0" * (settings.max_dataset_bytes + 1))
    assert response.status_code == 413
    stacked = npz_bytes(tmp_path, h=np.zeros((5, 2, 1, 128), np.float32), labels=np.arange(5))
    body = post_file(client, "/v1/datasets", "d.npz", stacked).json()
    assert body["n_samples"] == 5 and body["arrays"]["h"] == {"shape": [5, 2, 1, 128], "dtype": "float32"}


def test_idempotency_key(client: TestClient, model_id: str) -> None:
    first = client.post("/v1/jobs", json=job_body(model_id), headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=job_body(model_id), headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = {**job_body(model_id), "steps": [{"type": "quantize", "mode": "dynamic", "per_channel": True}]}
    conflict = client.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k1"})
    assert conflict.status_code == 409
    fresh = client.post("/v1/jobs", json=job_body(model_id))
    assert fresh.json()["id"] != first.json()["id"]


def test_cursor_pagination_and_status_filter(client: TestClient, model_id: str) -> None:
    created = [client.post("/v1/jobs", json=job_body(model_id)).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))
    assert len(client.get("/v1/jobs", params={"status": JobStatus.QUEUED}).json()["items"]) == 5
    assert client.get("/v1/jobs", params={"status": JobStatus.SUCCEEDED}).json()["items"] == []
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422


def test_cancel_queued_job_and_finished_job(client: TestClient, model_id: str) -> None:
    job = client.post("/v1/jobs", json=job_body(model_id)).json()
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == JobStatus.CANCELED
    assert canceled.json()["started_at"] is None
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_too_many_steps(client: TestClient, model_id: str, settings: Settings) -> None:
    body = {"model_id": model_id, "steps": [{"type": "quantize", "mode": "dynamic"}] * (settings.max_steps + 1)}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422 and "MAX_STEPS" in response.json()["detail"]


def test_api_keys(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_keys="secret-1, secret-2")
    assert settings.api_keys == ["secret-1", "secret-2"]
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer secret-2"}).status_code == 200
        assert client.get("/v1/jobs", headers={"X-API-Key": "secret-1"}).status_code == 200
        assert client.get("/livez").status_code == 200  # probes stay open


def test_readyz_names_the_broken_dependency(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("down")


def test_broker_down_keeps_the_job_queued(tmp_path: Path, digits_cnn) -> None:
    """An outbox: the job is accepted and stays queued, unpublished, for the workers' sweep (test_recovery_stacks)."""
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        model = post_file(client, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes()).json()
        response = client.post("/v1/jobs", json=job_body(model["id"]))
        assert response.status_code == 202 and response.json()["status"] == JobStatus.QUEUED, response.text
        (job,) = client.get("/v1/jobs").json()["items"]
        events = client.get(f"/v1/jobs/{job['id']}/events").json()
    assert job["status"] == JobStatus.QUEUED and job["error"] is None
    assert any(event["kind"] == "info" and "broker did not answer" in event["message"] for event in events)


def test_openapi_documents_the_steps(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/artifacts/{name}" in schema["paths"]
    assert "DynamicQuantizeConfig" in str(schema["components"]["schemas"])
    assert client.get("/docs").status_code == 200
