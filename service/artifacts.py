"""Artifact storage shared by the api and every worker: a local (or mounted) folder, or an S3 bucket."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from app.core.config import Settings

CHUNK = 1 << 20


class ArtifactStore(Protocol):
    def put_file(self, key: str, src: Path) -> None: ...

    def fetch(self, key: str, dst: Path) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def stream(self, key: str) -> Iterator[bytes]: ...


class LocalArtifactStore:
    """Keys are relative paths under one root; writes land atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, src: Path) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".incoming-")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def move_in(self, key: str, src: Path) -> None:
        """Adopt a file already written under the store's filesystem without copying it."""
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)
        except OSError:  # another filesystem
            self.put_file(key, src)
            src.unlink(missing_ok=True)

    def fetch(self, key: str, dst: Path) -> Path:
        """Workers on the same filesystem read in place; no copy."""
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def stream(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk


class S3ArtifactStore:
    """An S3-compatible bucket (AWS, MinIO): lets api and workers run on different machines."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, src: Path) -> None:
        self.client.upload_file(str(src), self.bucket, self._key(key))

    def move_in(self, key: str, src: Path) -> None:
        self.put_file(key, src)
        src.unlink(missing_ok=True)

    def fetch(self, key: str, dst: Path) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(dst))
        return dst

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def stream(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        yield from body.iter_chunks(CHUNK)


@lru_cache
def _store(kind: str, root: Path, bucket: str | None, prefix: str, endpoint: str | None) -> ArtifactStore:
    if kind == "s3":
        if not bucket:
            raise ValueError("ARTIFACT_STORE=s3 needs S3_BUCKET")
        return S3ArtifactStore(bucket, prefix, endpoint)
    return LocalArtifactStore(root)


def get_store(settings: Settings) -> ArtifactStore:
    return _store(
        settings.artifact_store,
        settings.resolved_artifacts_dir,
        settings.s3_bucket,
        settings.s3_prefix,
        settings.s3_endpoint_url,
    )


def model_key(model_id: str) -> str:
    return f"models/{model_id}.onnx"


def dataset_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}.npz"


def job_artifact_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/{name}"
