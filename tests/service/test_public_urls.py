"""Absolute `urls` in job responses: from the request's base URL, or PUBLIC_BASE_URL behind a proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from service.settings import Settings

STEPS = [{"type": "quantize", "mode": "dynamic"}]


def submit(client: TestClient, model_bytes: bytes) -> dict:
    model = client.post("/v1/models", files={"file": ("digits.onnx", model_bytes)})
    assert model.status_code == 201, model.text
    job = client.post("/v1/jobs", json={"model_id": model.json()["id"], "steps": STEPS})
    assert job.status_code == 202, job.text
    return job.json()


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator:
    clients: list[TestClient] = []

    def make(**settings: object) -> TestClient:
        client = TestClient(create_app(Settings(data_dir=tmp_path / "data", **settings)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_urls_are_absolute_from_the_request(make_client, digits_cnn) -> None:
    client = make_client()
    job = submit(client, digits_cnn.path.read_bytes())
    assert job["urls"]["self"] == f"http://testserver/v1/jobs/{job['id']}"
    assert job["urls"]["events"] == f"http://testserver/v1/jobs/{job['id']}/events"
    # the Host the client used, in every view of the job (the list too)
    listed = client.get("/v1/jobs", headers={"host": "compress.internal:9000"}).json()["items"][0]
    assert listed["urls"]["cancel"] == f"http://compress.internal:9000/v1/jobs/{job['id']}/cancel"
    assert client.get(job["urls"]["self"]).json()["id"] == job["id"]


def test_public_base_url_wins(make_client, digits_cnn) -> None:
    client = make_client(public_base_url="https://models.example.com/compress/")
    job = submit(client, digits_cnn.path.read_bytes())
    assert job["urls"]["self"] == f"https://models.example.com/compress/v1/jobs/{job['id']}"
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["urls"]["events"] == f"https://models.example.com/compress/v1/jobs/{job['id']}/events"
