"""Artifact stores: local folder and S3 (against moto's S3 server, the way MinIO serves compose)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from app.storage import LocalArtifactStore, S3ArtifactStore
from tests.service.client import poll, submit, upload
from tests.service.conftest import Stack
from tests.service.stack import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in S3_ENV.items():
            patch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="artifacts")
        yield endpoint
    server.stop()


def exercise(store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3_000_000)
    assert not store.exists("jobs/j1/model.onnx")
    store.put_file("jobs/j1/model.onnx", src)
    assert store.exists("jobs/j1/model.onnx") and store.size("jobs/j1/model.onnx") == 3_000_000
    assert b"".join(store.stream("jobs/j1/model.onnx")) == src.read_bytes()
    fetched = store.fetch("jobs/j1/model.onnx", tmp_path / "fetched" / "m.onnx")
    assert fetched.read_bytes() == src.read_bytes()
    store.move_in("models/m.onnx", src)
    assert store.exists("models/m.onnx") and not src.exists()


def test_local_store(tmp_path: Path) -> None:
    exercise(LocalArtifactStore(tmp_path / "root"), tmp_path)
    with pytest.raises(ValueError, match="escapes"):
        LocalArtifactStore(tmp_path / "root").exists("../outside")


def test_s3_store(s3_endpoint: str, tmp_path: Path) -> None:
    exercise(S3ArtifactStore("artifacts", prefix="unit", endpoint_url=s3_endpoint), tmp_path)


def test_flow_with_s3_artifacts(production_backend: Stack, s3_endpoint: str, digits_cnn, tmp_path: Path) -> None:
    """api and worker share nothing but PostgreSQL, Redis and the bucket, as on separate machines."""
    s3 = {"ARTIFACT_STORE": "s3", "S3_BUCKET": "artifacts", "S3_PREFIX": "flow", "S3_ENDPOINT_URL": s3_endpoint}
    env = {**production_backend.env, **S3_ENV, **s3, "DATA_DIR": str(tmp_path / "api-data")}
    stack = Stack(env, tmp_path)
    stack.start_api("api")
    stack.start_worker(DATA_DIR=str(tmp_path / "worker-data"))
    try:
        with stack.client() as client:
            model = upload(client, "/v1/models", digits_cnn.path)
            job = submit(client, {"model_id": model["id"], "steps": [{"type": "quantize", "mode": "dynamic"}]})
            job = poll(client, job["id"], timeout=120)
            assert job["status"] == "succeeded", job["error"]
            response = client.get(job["urls"]["model"])
        assert response.status_code == 200 and len(response.content) < digits_cnn.path.stat().st_size
        keys = {
            o["Key"]
            for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="artifacts")["Contents"]
        }
        assert f"flow/models/{model['id']}.onnx" in keys and f"flow/jobs/{job['id']}/model.onnx" in keys
        assert not (tmp_path / "api-data" / "artifacts").exists()
    finally:
        stack.stop()
