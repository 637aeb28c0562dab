"""Issue 12 item 1: the OpenAPI document says what the API returns (checked on the app's own schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from service.settings import Settings

OPERATION_IDS = {
    ("post", "/v1/models"): "create_model",
    ("get", "/v1/models/{model_id}"): "get_model",
    ("post", "/v1/datasets"): "create_dataset",
    ("get", "/v1/datasets/{dataset_id}"): "get_dataset",
    ("post", "/v1/jobs"): "create_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("get", "/v1/jobs/{job_id}/events"): "list_job_events",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"): "download_job_artifact",
}
ERRORS = {
    "create_model": {"401", "413", "422"},
    "create_dataset": {"401", "413", "422"},
    "get_model": {"401", "404", "422"},
    "get_dataset": {"401", "404", "422"},
    "create_job": {"401", "409", "413", "422", "503"},
    "list_jobs": {"401", "422"},
    "get_job": {"401", "404", "422"},
    "list_job_events": {"401", "404", "422"},
    "cancel_job": {"401", "404", "409", "422"},
    "download_job_artifact": {"401", "404", "422"},
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return create_app(Settings(data_dir=Path(tmp_path_factory.mktemp("openapi")) / "data")).openapi()


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return spec["paths"][path][method]


def test_operation_ids(spec: dict[str, Any]) -> None:
    for (method, path), name in OPERATION_IDS.items():
        assert _operation(spec, method, path)["operationId"] == name


def test_every_error_is_documented_as_a_problem(spec: dict[str, Any]) -> None:
    for (method, path), name in OPERATION_IDS.items():
        responses = _operation(spec, method, path)["responses"]
        assert ERRORS[name] <= set(responses), (name, sorted(responses))
        for status in ERRORS[name]:
            content = responses[status]["content"]
            assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    assert problem["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def _untyped(schema: dict[str, Any], where: str, schemas: dict[str, Any], seen: set[str]) -> list[str]:
    """Properties with no type at all (`{}`: Any); dicts of free-form values are allowed only as `object`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _untyped(schemas[name], name, schemas, seen)
    found: list[str] = []
    if not any(key in schema for key in ("type", "anyOf", "oneOf", "allOf", "enum", "const")):
        found.append(where)
    for key in ("anyOf", "oneOf", "allOf"):
        for index, option in enumerate(schema.get(key, [])):
            found += _untyped(option, f"{where}.{key}[{index}]", schemas, seen)
    for name, prop in schema.get("properties", {}).items():
        found += _untyped(prop, f"{where}.{name}", schemas, seen)
    if isinstance(schema.get("items"), dict):
        found += _untyped(schema["items"], f"{where}[]", schemas, seen)
    return found


@pytest.mark.parametrize("name", ["ModelOut", "DatasetOut", "JobOut", "JobPage", "JobEventOut", "JobMetricsOut"])
def test_resources_are_typed(spec: dict[str, Any], name: str) -> None:
    schemas = spec["components"]["schemas"]
    assert _untyped(schemas[name], name, schemas, set()) == []


def test_status_is_an_enum_and_metrics_a_model(spec: dict[str, Any]) -> None:
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert job["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert set(spec["components"]["schemas"]["JobStatus"]["enum"]) == {
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
    }
    assert {"$ref": "#/components/schemas/JobMetricsOut"} in job["metrics"]["anyOf"]


def test_security_schemes(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {**schemes["HTTPBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    for method, path in OPERATION_IDS:
        assert {"HTTPBearer": []} in _operation(spec, method, path)["security"]
    assert "security" not in _operation(spec, "get", "/livez")


def test_artifacts_are_binary_and_json(spec: dict[str, Any]) -> None:
    content = _operation(spec, "get", "/v1/jobs/{job_id}/artifacts/{name}")["responses"]["200"]["content"]
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/JobMetricsOut"}


def test_request_bodies_have_examples(spec: dict[str, Any]) -> None:
    job_create = spec["components"]["schemas"]["JobCreate"]
    assert job_create["examples"] and job_create["examples"][0]["steps"]
    upload = _operation(spec, "post", "/v1/models")["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["file"]["format"] == "binary"
