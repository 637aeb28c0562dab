"""Every non-2xx answer has the one error shape (RFC 9457 problem+json, `detail` a string, a stable `code`),
on every route of the OpenAPI and on the routes outside it (probes, console, docs assets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from service.settings import Settings

PROBLEM = "application/problem+json"
BOGUS_ID = "0123abcd0123abcd"


def assert_problem(response, status: int | None = None, code: str | None = None) -> dict:
    where = f"{response.request.method} {response.request.url.path}"
    assert response.headers["content-type"].startswith(PROBLEM), (where, response.status_code, response.text)
    body = response.json()
    assert {"type", "title", "status", "detail", "code", "errors"} <= body.keys(), (where, body)
    assert body["status"] == response.status_code and isinstance(body["detail"], str) and body["detail"], where
    assert body["type"].endswith(":" + body["code"]), (where, body)
    assert status is None or response.status_code == status, (where, body)
    assert code is None or body["code"] == code, (where, body)
    return body


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data")), raise_server_exceptions=False) as test_client:
        yield test_client


def test_every_documented_operation_answers_errors_as_problems(client: TestClient) -> None:
    """Each operation called with unknown ids and an empty body: whatever non-2xx it answers is a Problem."""
    schema = client.get("/openapi.json").json()
    checked = 0
    for path, operations in schema["paths"].items():
        url = path
        for name in ("job_id", "model_id", "dataset_id", "name"):
            url = url.replace("{" + name + "}", "model.onnx" if name == "name" else BOGUS_ID)
        for method in operations:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            response = client.request(method, url, json={} if method in {"post", "put", "patch"} else None)
            if response.status_code >= 400:
                assert_problem(response)
                checked += 1
    assert checked >= 8, checked


def test_routes_outside_the_schema_answer_problems_too(client: TestClient) -> None:
    assert_problem(client.get(f"/v1/jobs/{BOGUS_ID}/report"), 404, "job_not_found")
    assert_problem(client.get("/console/nothing.js"), 404, "not_found")
    assert_problem(client.get("/docs-assets/nothing.js"), 404, "not_found")
    assert_problem(client.get("/nowhere"), 404, "not_found")
    assert_problem(client.post("/livez"), 405, "method_not_allowed")


def test_readyz_down_is_a_problem_naming_the_broken_dependency(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("down")
    assert "broker" in body["detail"]
