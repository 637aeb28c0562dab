"""Artifact stores: one conformance test for both the local folder and S3 (moto's S3 server, as MinIO in compose)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from service.artifacts import ArtifactNotFoundError, ArtifactStore, LocalArtifactStore, S3ArtifactStore
from service.status import JobStatus
from tests.service.client import poll, submit, upload
from tests.service.conftest import Stack
from tests.service.s3 import S3_ENV, moto_s3

SIZE = 3_000_000  # several 1 MiB stream chunks


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3("artifacts") as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3ArtifactStore("artifacts", prefix=f"unit-{tmp_path.name}", endpoint_url=endpoint)


def payload(path: Path, byte: bytes, size: int = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(byte * size)
    return path


def test_store_contract(store: ArtifactStore, tmp_path: Path) -> None:
    key = "jobs/j1/model.onnx"
    src = payload(tmp_path / "src.bin", b"x")

    # put_file copies in; exists, size and stream see it; the source stays
    assert not store.exists(key)
    store.put_file(key, src)
    assert src.exists() and store.exists(key) and store.size(key) == SIZE
    chunks = list(store.stream(key))
    assert len(chunks) > 1 and b"".join(chunks) == src.read_bytes()

    # fetch fills dst (creating its folder) and returns it
    dst = tmp_path / "work" / "inputs" / "model.onnx"
    assert store.fetch(key, dst) == dst and dst.read_bytes() == src.read_bytes()
    assert store.fetch(key, dst) == dst  # fetching again over an existing dst is fine

    # replacing the key never changes a file an earlier fetch handed out
    store.put_file(key, payload(tmp_path / "new.bin", b"y", 1000))
    assert dst.read_bytes() == b"x" * SIZE and store.size(key) == 1000

    # move_in adopts the file: the key has its bytes, the source is gone
    moved = payload(tmp_path / "incoming" / "upload.bin", b"z", 5000)
    store.move_in("models/m.onnx", moved)
    assert not moved.exists() and b"".join(store.stream("models/m.onnx")) == b"z" * 5000

    # delete removes the key and only it; deleting a missing key is not an error
    store.delete(key)
    assert not store.exists(key) and store.exists("models/m.onnx")
    store.delete(key)

    # a missing key is one clear error for every read
    with pytest.raises(ArtifactNotFoundError, match="jobs/j1/model.onnx"):
        store.fetch(key, tmp_path / "missing.onnx")
    assert not (tmp_path / "missing.onnx").exists()
    with pytest.raises(ArtifactNotFoundError):
        store.size(key)
    with pytest.raises(ArtifactNotFoundError):
        store.stream(key)


def test_local_store_links_instead_of_copying(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    store.put_file("models/m.onnx", payload(tmp_path / "src.bin", b"x"))
    dst = store.fetch("models/m.onnx", tmp_path / "work" / "m.onnx")
    assert os.path.samefile(dst, tmp_path / "root" / "models" / "m.onnx")  # same filesystem: a hard link


def test_local_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        LocalArtifactStore(tmp_path / "root").exists("../outside")


@pytest.mark.services
@pytest.mark.slow
def test_flow_with_s3_artifacts(production_backend: Stack, s3_endpoint: str, digits_cnn, tmp_path: Path) -> None:
    """api and worker share nothing but PostgreSQL, Redis and the bucket, as on separate machines."""
    s3 = {"ARTIFACT_STORE": "s3", "S3_BUCKET": "artifacts", "S3_PREFIX": "flow", "S3_ENDPOINT_URL": s3_endpoint}
    env = {**production_backend.env, **S3_ENV, **s3, "DATA_DIR": str(tmp_path / "api-data")}
    stack = Stack(env, tmp_path)
    try:
        stack.start_api("api")
        stack.start_worker(DATA_DIR=str(tmp_path / "worker-data"))
        with stack.client() as client:
            model = upload(client, "/v1/models", digits_cnn.path)
            job = submit(client, {"model_id": model["id"], "steps": [{"type": "quantize", "mode": "dynamic"}]})
            job = poll(client, job["id"], timeout=120)
            assert job["status"] == JobStatus.SUCCEEDED, job["error"]
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
