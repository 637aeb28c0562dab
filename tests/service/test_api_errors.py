"""Issue 11 findings 6, 8, 9, 11 and 12 (error shape): one test each, against the app in-process.

Every non-2xx is an RFC 9457 problem (`application/problem+json`, `detail` a string, a stable `code`); no input
gets a 500; limits and references are checked at submission; messages never show the server's paths.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from app.main import create_app
from service.settings import Settings

PROBLEM = "application/problem+json"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_model_bytes=400_000, max_dataset_bytes=2_000_000)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def post_file(client: TestClient, route: str, name: str, content: bytes):
    return client.post(route, files={"file": (name, content, "application/octet-stream")})


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def assert_problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert {"type", "title", "status", "detail", "code", "errors"} <= body.keys()
    assert body["status"] == status and isinstance(body["detail"], str) and body["detail"]
    assert body["type"].endswith(body["code"])
    if code:
        assert body["code"] == code, body
    return body


def assert_no_temp_files(settings: Settings) -> None:
    incoming = settings.data_dir / "incoming"
    assert not incoming.exists() or not any(incoming.iterdir()), list(incoming.iterdir())


@pytest.fixture
def model_id(client: TestClient, digits_cnn) -> str:
    response = post_file(client, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
    assert response.status_code == 201, response.text
    return response.json()["id"]


# finding 12: one error shape ------------------------------------------------------------------------------


def test_every_error_is_a_problem(client: TestClient, model_id: str) -> None:
    assert_problem(client.get("/v1/models/0123abcd"), 404, "model_not_found")
    assert_problem(client.get("/v1/jobs/0123abcd"), 404, "job_not_found")
    assert_problem(client.get("/v1/nowhere"), 404, "not_found")
    assert_problem(client.delete("/v1/jobs"), 405, "method_not_allowed")
    body = assert_problem(client.post("/v1/jobs", json={"model_id": model_id, "steps": []}), 422, "validation_error")
    assert body["errors"] and body["errors"][0]["loc"][:2] == ["body", "steps"]
    assert_problem(client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_problem(client.get("/v1/jobs", params={"cursor": "garbage"}), 422, "invalid_cursor")
    assert_problem(client.get("/v1/jobs/0123abcd/artifacts/secret.txt"), 422, "validation_error")


def test_unauthorized_is_a_problem(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"api_keys": ["k1"]}))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(client.get("/v1/jobs"), 401, "unauthorized")
        assert client.get("/v1/jobs", headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer k1"}).status_code == 200


# finding 8: no 500 for any input ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422(client: TestClient, model_id: str, number: str) -> None:
    body = f'{{"model_id": "{model_id}", "steps": [{{"type": "prune", "method": "magnitude", "sparsity": {number}}}]}}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422)
    assert "sparsity" in problem["detail"] or "finite" in problem["detail"]


def test_non_finite_numbers_in_an_optional_float_are_422(client: TestClient, model_id: str) -> None:
    body = f'{{"model_id": "{model_id}", "steps": [{{"type": "distill", "lr": NaN}}]}}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 422)


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_non_ascii_key_is_401(settings: Settings, header: str) -> None:
    app = create_app(settings.model_copy(update={"api_keys": ["k1"]}))
    with TestClient(app, raise_server_exceptions=False) as client:
        value = b"Bearer k\xff\xe9" if header == "Authorization" else b"k\xff\xe9"
        assert_problem(client.get("/v1/jobs", headers={header: value}), 401, "unauthorized")


def test_malformed_npy_header_is_422_and_leaves_no_temp_file(client: TestClient, settings: Settings) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("input.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4, 'shape': (" + b" " * 8)
    body = assert_problem(post_file(client, "/v1/datasets", "bad.npz", buffer.getvalue()), 422)
    assert "npz" in body["detail"] or "header" in body["detail"].lower()
    assert_no_temp_files(settings)


@pytest.mark.parametrize(
    "array",
    [np.array(["a", "b"]), np.array([b"a", b"b"]), np.zeros(2, dtype=[("a", "f4")]), np.zeros(2, dtype=np.complex64)],
    ids=["str", "bytes", "structured", "complex"],
)
def test_non_numeric_dataset_is_422_at_upload(client: TestClient, settings: Settings, array: np.ndarray) -> None:
    body = assert_problem(post_file(client, "/v1/datasets", "s.npz", npz_bytes(input=array)), 422)
    assert "numeric" in body["detail"]
    assert_no_temp_files(settings)


def test_object_array_dataset_is_422(client: TestClient, settings: Settings) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, input=np.array([{"a": 1}, None], dtype=object))
    body = assert_problem(post_file(client, "/v1/datasets", "o.npz", buffer.getvalue()), 422)
    assert "objects" in body["detail"]
    assert_no_temp_files(settings)


def test_long_filename_is_truncated_and_stored_with_its_row(client: TestClient, digits_cnn) -> None:
    name = "m" * 400 + ".onnx"
    response = post_file(client, "/v1/models", name, digits_cnn.path.read_bytes())
    assert response.status_code == 201, response.text
    stored = response.json()["filename"]
    assert len(stored) == 255 and stored.endswith(".onnx")
    assert client.get(f"/v1/models/{response.json()['id']}").json()["filename"] == stored


def test_nul_bytes_are_4xx(client: TestClient, model_id: str, digits_cnn) -> None:
    assert 400 <= client.get("/v1/models/ab%00cd").status_code < 500
    assert 400 <= client.get("/v1/jobs/ab%00cd/events").status_code < 500
    assert_problem(client.post("/v1/jobs", json={"model_id": "ab\x00cd", "steps": [{"type": "quantize"}]}), 422)
    body = {"model_id": model_id, "steps": [{"type": "quantize"}], "datasets": {"eval": "x\x00"}}
    assert_problem(client.post("/v1/jobs", json=body), 422)
    response = post_file(client, "/v1/models", "a\x00b.onnx", digits_cnn.path.read_bytes())
    assert response.status_code == 201 and "\x00" not in response.json()["filename"]


# finding 11: paths, labels, huge dims ---------------------------------------------------------------------


def test_messages_do_not_show_server_paths(client: TestClient, settings: Settings) -> None:
    for content in (b"\x08\x07" + b"\xff" * 100, b"junk" * 50):
        detail = assert_problem(post_file(client, "/v1/models", "m.onnx", content), 422)["detail"]
        assert str(settings.data_dir.resolve()) not in detail and ".upload-" not in detail, detail
        assert "/tmp/" not in detail, detail
    detail = assert_problem(post_file(client, "/v1/datasets", "d.npz", b"PK\x03\x04junk"), 422)["detail"]
    assert str(settings.data_dir.resolve()) not in detail and ".upload-" not in detail


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.zeros((4, 3), dtype=np.int64), "shape"),
        (np.zeros((4, 1, 1), dtype=np.int64), "shape"),
        (np.array([0, 1, -5, 2]), "-5"),
        (np.array([0, 1, 10**12, 2]), "MAX_LABEL_VALUE"),
        (np.array([0.0, np.nan, 1.0, 2.0], dtype=np.float32), "NaN"),
    ],
    ids=["rank2", "rank3", "negative", "huge", "nan"],
)
def test_bad_labels_are_refused(client: TestClient, labels: np.ndarray, words: str) -> None:
    content = npz_bytes(input=np.zeros((4, 1, 8, 8), np.float32), labels=labels)
    body = assert_problem(post_file(client, "/v1/datasets", "l.npz", content), 422)
    assert "labels" in body["detail"] or "NaN" in body["detail"]
    assert words in body["detail"]


def test_huge_declared_input_says_what_is_too_large(client: TestClient, settings: Settings) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [100000, 100000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [100000, 100000])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    body = assert_problem(post_file(client, "/v1/models", "huge.onnx", model.SerializeToString()), 422)
    assert "'x'" in body["detail"] and "MAX_INPUT_SAMPLE_BYTES" in body["detail"]
    assert_no_temp_files(settings)


def test_zip_bomb_is_refused_from_headers(client: TestClient, settings: Settings) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**31, 4)})
        archive.writestr("input.npy", header.getvalue() + b"\0" * 1_000_000)
    body = assert_problem(post_file(client, "/v1/datasets", "bomb.npz", buffer.getvalue()), 413)
    assert "MAX_DATASET_UNCOMPRESSED_BYTES" in body["detail"]
    assert_no_temp_files(settings)


# finding 6: request bodies are capped before parsing -------------------------------------------------------


def test_large_json_body_is_413_before_parsing(client: TestClient, settings: Settings) -> None:
    big = b'{"model_id": "' + b"a" * (settings.max_json_body_bytes + 10) + b'"}'
    assert_problem(client.post("/v1/jobs", content=big, headers={"content-type": "application/json"}), 413)


def test_large_chunked_json_body_is_413(client: TestClient, settings: Settings) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model_id": "'
        for _ in range(settings.max_json_body_bytes // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text


# finding 9: specs checked against settings and references at submission -------------------------------------


def test_epochs_over_the_limit_are_422(client: TestClient, model_id: str, settings: Settings) -> None:
    steps = [{"type": "distill", "epochs": settings.distill.max_epochs + 1}]
    body = assert_problem(client.post("/v1/jobs", json={"model_id": model_id, "steps": steps}), 422)
    assert "DISTILL_MAX_EPOCHS" in body["detail"] and body["code"] == "limit_exceeded"


def test_unknown_student_is_422(client: TestClient, model_id: str) -> None:
    steps = [{"type": "distill", "student": "0123456789abcdef"}]
    body = assert_problem(client.post("/v1/jobs", json={"model_id": model_id, "steps": steps}), 422)
    assert "student" in body["detail"] and "0123456789abcdef" in body["detail"]
    steps = [{"type": "distill", "student": "../../etc"}]
    assert_problem(client.post("/v1/jobs", json={"model_id": model_id, "steps": steps}), 422)
