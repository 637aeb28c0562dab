"""`POST /v1/models` and `POST /v1/datasets` with `{"url": ...}`: files imported from an HTTP server started
here (127.0.0.1, permitted by OUTBOUND_ALLOWLIST) and from S3 (moto's S3 server), with the upload's limits and
checks; every failure a 4xx problem that says what to fix, and no temp file left behind."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from onnx_compress import ApiError, Client
from service.settings import Settings
from tests.service.conftest import Stack
from tests.service.s3 import moto_s3
from tests.service.stack import free_port

PROBLEM = "application/problem+json"
BUCKET = "team-models"


class Files(SimpleHTTPRequestHandler):
    """Serves the folder it is given, plus /redirect (302 to /digits.onnx), /loop (redirects to itself) and
    /private-redirect (302 to a private address)."""

    def do_GET(self) -> None:  # noqa: N802
        redirects = {"/redirect": "/digits.onnx", "/loop": "/loop", "/private-redirect": "http://10.255.255.1/x"}
        if self.path == "/unsized.onnx":  # no Content-Length: the limit is enforced while streaming
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 10_000)
            return
        if self.path == "/slow.onnx":  # trickles: the whole import is bounded by URL_IMPORT_MAX_SECONDS
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x" * 100)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, digits_cnn) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("served")
    (root / "digits.onnx").write_bytes(digits_cnn.path.read_bytes())
    digits_cnn.write_npz(root / "digits_eval.npz", split="test", limit=64)
    (root / "not_a_model.onnx").write_bytes(b"this is not protobuf" * 100)
    (root / "empty.onnx").write_bytes(b"")
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *args: Files(*args, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tls_served(tmp_path_factory: pytest.TempPathFactory, served: tuple[str, Path]) -> Iterator[tuple[str, Path]]:
    """The same files over HTTPS, with a self-signed certificate for 127.0.0.1 (returned as the CA to trust)."""
    _, root = served
    certs = tmp_path_factory.mktemp("tls")
    cert, key = certs / "cert.pem", certs / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *args: Files(*args, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3_endpoint(digits_cnn) -> Iterator[str]:
    with moto_s3(BUCKET, "artifacts") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.put_object(Bucket=BUCKET, Key="zoo/digits.onnx", Body=digits_cnn.path.read_bytes())
        s3.put_object(Bucket="artifacts", Key="store/models/other-tenant.onnx", Body=digits_cnn.path.read_bytes())
        yield endpoint


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    defaults: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "outbound_allowlist": ["127.0.0.1"],
        "outbound_allow_http": True,
        "max_model_bytes": 400_000,
        "url_import_timeout_seconds": 10,
    }
    return Settings(**{**defaults, **overrides})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_problem(response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["detail"], (word, body["detail"])
    return body


def assert_no_temp_files(settings: Settings) -> None:
    incoming = settings.data_dir / "incoming"
    assert not incoming.exists() or not any(incoming.iterdir()), list(incoming.iterdir())


def test_model_and_dataset_from_http(client: TestClient, served: tuple[str, Path], settings: Settings) -> None:
    base, root = served
    response = client.post("/v1/models", json={"url": f"{base}/digits.onnx"})
    assert response.status_code == 201, response.text
    model = response.json()
    expected = root.joinpath("digits.onnx").read_bytes()
    assert model["sha256"] == hashlib.sha256(expected).hexdigest() and model["size_bytes"] == len(expected)
    assert model["filename"] == "digits.onnx" and model["inputs"][0]["name"] == "input"
    assert response.headers["location"] == f"/v1/models/{model['id']}"
    assert client.get(f"/v1/models/{model['id']}").json()["sha256"] == model["sha256"]

    dataset = client.post("/v1/datasets", json={"url": f"{base}/digits_eval.npz"})
    assert dataset.status_code == 201, dataset.text
    assert dataset.json()["n_samples"] == 64 and dataset.json()["has_labels"]
    # the imported files feed a job like uploaded ones
    job = client.post(
        "/v1/jobs",
        json={
            "model_id": model["id"],
            "steps": [{"type": "quantize", "mode": "dynamic"}],
            "datasets": {"eval": dataset.json()["id"]},
        },
    )
    assert job.status_code == 202, job.text
    assert_no_temp_files(settings)


def test_model_from_https_with_a_private_ca(tmp_path: Path, tls_served: tuple[str, Path]) -> None:
    base, ca = tls_served
    settings = make_settings(tmp_path, outbound_allow_http=False, outbound_ca_bundle=ca)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/models", json={"url": f"{base}/digits.onnx"})
        assert response.status_code == 201, response.text
        assert response.json()["filename"] == "digits.onnx"
    # without the CA the certificate is not trusted: unreachable, saying why
    settings = make_settings(tmp_path, outbound_allow_http=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(client.post("/v1/models", json={"url": f"{base}/digits.onnx"}), 422, "url_unreachable")
        assert "certificate" in body["detail"].lower()
    assert_no_temp_files(settings)


def test_redirects_are_followed_and_bounded(client: TestClient, served: tuple[str, Path], settings: Settings) -> None:
    base, _ = served
    response = client.post("/v1/models", json={"url": f"{base}/redirect"})
    assert response.status_code == 201, response.text
    assert_problem(client.post("/v1/models", json={"url": f"{base}/loop"}), 422, "url_upstream_error", "redirects")
    # a redirect to an address the rules refuse is refused like the address itself
    body = assert_problem(client.post("/v1/models", json={"url": f"{base}/private-redirect"}), 422, "url_refused")
    assert "OUTBOUND_ALLOWLIST" in body["detail"]
    assert_no_temp_files(settings)


def test_upstream_failures_say_what_to_fix(client: TestClient, served: tuple[str, Path], settings: Settings) -> None:
    base, _ = served
    assert_problem(client.post("/v1/models", json={"url": f"{base}/missing.onnx"}), 422, "url_not_found", "404")
    closed = f"http://127.0.0.1:{free_port()}/digits.onnx"
    assert_problem(client.post("/v1/models", json={"url": closed}), 422, "url_unreachable", "could not reach")
    assert_problem(client.post("/v1/models", json={"url": f"{base}/empty.onnx"}), 422, "empty_model")
    # the same validation as an upload
    invalid = client.post("/v1/models", json={"url": f"{base}/not_a_model.onnx"})
    assert invalid.status_code == 422 and invalid.json()["code"] != "validation_error", invalid.text
    assert_no_temp_files(settings)


def test_bad_urls_and_bodies(client: TestClient, settings: Settings) -> None:
    assert_problem(client.post("/v1/models", json={"url": "ftp://example.com/m.onnx"}), 422, "url_not_supported")
    assert_problem(client.post("/v1/models", json={"url": "digits.onnx"}), 422, "url_not_supported", "s3://")
    assert_problem(client.post("/v1/models", json={"url": "s3://only-bucket"}), 422, "url_not_supported")
    body = assert_problem(client.post("/v1/datasets", json={"link": "https://example.com"}), 422, "validation_error")
    assert ["body", "url"] in [error["loc"] for error in body["errors"]]
    assert_problem(
        client.post("/v1/models", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation_error",
    )
    assert_problem(client.post("/v1/models", json={"url": "https://x/" + "a" * 2_000_000}), 413, "body_too_large")
    assert_no_temp_files(settings)


def test_too_large_is_413_declared_or_streamed(tmp_path: Path, served: tuple[str, Path]) -> None:
    base, root = served
    size = root.joinpath("digits.onnx").stat().st_size
    settings = make_settings(tmp_path, max_model_bytes=size - 1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(client.post("/v1/models", json={"url": f"{base}/digits.onnx"}), 413, "upload_too_large")
        assert "MAX_MODEL_BYTES" in body["detail"]
    assert_no_temp_files(settings)


def test_unsized_source_is_cut_off_at_the_limit_and_slow_ones_in_time(tmp_path: Path, served: tuple[str, Path]) -> None:
    base, _ = served
    settings = make_settings(tmp_path, max_model_bytes=100_000, url_import_max_seconds=1.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(client.post("/v1/models", json={"url": f"{base}/unsized.onnx"}), 413, "upload_too_large")
        assert "100000" in body["detail"]
        started = time.monotonic()
        body = assert_problem(client.post("/v1/models", json={"url": f"{base}/slow.onnx"}), 422, "url_timeout")
        assert "URL_IMPORT_MAX_SECONDS" in body["detail"] and time.monotonic() - started < 30
    assert_no_temp_files(settings)


def test_private_addresses_and_plain_http_are_refused_by_default(tmp_path: Path, served: tuple[str, Path]) -> None:
    base, _ = served
    settings = make_settings(tmp_path, outbound_allowlist=[], outbound_allow_http=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(client.post("/v1/models", json={"url": f"{base}/digits.onnx"}), 422, "url_refused")
        assert "loopback" in body["detail"] and "OUTBOUND_ALLOWLIST" in body["detail"]
    settings = make_settings(tmp_path, outbound_allow_http=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(client.post("/v1/models", json={"url": f"{base}/digits.onnx"}), 422, "url_not_supported")
        assert "https://" in body["detail"] and "OUTBOUND_ALLOW_HTTP" in body["detail"]
    assert_no_temp_files(settings)


def test_model_from_s3(tmp_path: Path, s3_endpoint: str, digits_cnn) -> None:
    settings = make_settings(
        tmp_path, s3_endpoint_url=s3_endpoint, artifact_store="s3", s3_bucket="artifacts", s3_prefix="store"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/models", json={"url": f"s3://{BUCKET}/zoo/digits.onnx"})
        assert response.status_code == 201, response.text
        model = response.json()
        assert model["sha256"] == hashlib.sha256(digits_cnn.path.read_bytes()).hexdigest()
        assert model["filename"] == "digits.onnx"
        # stored in the artifact store like an upload
        stored = boto3.client("s3", endpoint_url=s3_endpoint).head_object(
            Bucket="artifacts", Key=f"store/models/{model['id']}.onnx"
        )
        assert stored["ContentLength"] == model["size_bytes"]
        missing = client.post("/v1/models", json={"url": f"s3://{BUCKET}/zoo/nothing.onnx"})
        assert_problem(missing, 422, "url_not_found", "check the URL")
        no_bucket = client.post("/v1/models", json={"url": "s3://no-such-bucket/m.onnx"})
        assert_problem(no_bucket, 422, "url_not_found")
        # the server's credentials read its own store: another tenant's artifacts are not importable
        own = client.post("/v1/models", json={"url": "s3://artifacts/store/models/other-tenant.onnx"})
        assert_problem(own, 422, "url_refused", "artifact store")
    assert_no_temp_files(settings)


def test_s3_too_large_is_refused_from_its_declared_size(tmp_path: Path, s3_endpoint: str, digits_cnn) -> None:
    settings = make_settings(tmp_path, s3_endpoint_url=s3_endpoint, max_model_bytes=1000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/models", json={"url": f"s3://{BUCKET}/zoo/digits.onnx"})
        assert_problem(response, 413, "upload_too_large", "declares")
    assert_no_temp_files(settings)


def test_openapi_documents_both_request_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/datasets"):
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert "multipart/form-data" in content and "application/json" in content
        assert content["application/json"]["schema"]["required"] == ["url"]


@pytest.mark.slow
def test_python_client_imports_by_url(tmp_path: Path, served: tuple[str, Path]) -> None:
    """Against a real `onnx-compress api` process."""
    base, _ = served
    env = {"DATA_DIR": str(tmp_path / "data"), "OUTBOUND_ALLOWLIST": "127.0.0.1", "OUTBOUND_ALLOW_HTTP": "true"}
    stack = Stack(env, tmp_path)
    try:
        with Client(stack.start_api("api").url) as client:
            model = client.upload_model(url=f"{base}/digits.onnx")
            assert model.filename == "digits.onnx"
            dataset = client.upload_dataset(url=f"{base}/digits_eval.npz")
            assert dataset.n_samples == 64
            with pytest.raises(ApiError) as error:
                client.upload_model(url=f"{base}/missing.onnx")
            assert error.value.status == 422 and error.value.code == "url_not_found"
            with pytest.raises(ValueError):
                client.upload_model()
    finally:
        stack.stop()
