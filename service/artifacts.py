"""Artifact storage shared by the api and every worker: a local (or mounted) folder, or an S3 bucket.

Keys are relative, slash-separated names (`models/<id>.onnx`, `jobs/<id>/model.onnx`). Every store keeps the
same contract (tests/service/test_artifact_store.py runs one conformance test against both):

- `put_file(key, src)` copies `src` in; `move_in(key, src)` adopts it (src is gone afterwards). A reader never
  sees a half-written artifact, and replacing a key never changes a file an earlier `fetch` handed out.
- `fetch(key, dst)` makes `dst` hold the artifact and returns `dst`. The local store hard-links when it can
  (same filesystem; no copy) and copies otherwise, so treat `dst` as read-only: write results to new files.
- `stream(key)` yields the bytes in chunks; `size(key)`, `exists(key)`; `delete(key)` removes it (a missing
  key is not an error); `delete_prefix(prefix)` removes every key under `prefix/` (a job's artifacts);
  `list_folders(prefix)` yields the names of the folders right under `prefix/` (the job ids under `jobs`).
- `fetch`, `stream` and `size` of a missing key raise `ArtifactNotFoundError`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from service.settings import Settings

CHUNK = 1 << 20


class ArtifactNotFoundError(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"artifact {key!r} does not exist")
        self.key = key


class ArtifactStore(Protocol):
    def put_file(self, key: str, src: Path) -> None: ...

    def move_in(self, key: str, src: Path) -> None: ...

    def fetch(self, key: str, dst: Path) -> Path: ...

    def stream(self, key: str) -> Iterator[bytes]: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def list_folders(self, prefix: str) -> Iterator[str]: ...


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy through a temp file in dst's folder and rename it over dst: readers see all or nothing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".incoming-")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalArtifactStore:
    """Keys are relative paths under one root (a local disk or a volume every process mounts)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFoundError(key)
        return path

    def put_file(self, key: str, src: Path) -> None:
        _atomic_copy(src, self._path(key))

    def move_in(self, key: str, src: Path) -> None:
        """Adopt a file already written on the store's filesystem without copying it."""
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)
        except OSError:  # another filesystem
            _atomic_copy(src, dst)
            src.unlink(missing_ok=True)

    def fetch(self, key: str, dst: Path) -> Path:
        """Hard-link the artifact at dst (no copy on the same filesystem); copy when linking is not possible.

        Safe because the store never rewrites a file in place (writes land by rename): later writes to the
        key leave the linked file as it was. Never write into dst.
        """
        src = self._existing(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or links not supported
            _atomic_copy(src, dst)
        return dst

    def stream(self, key: str) -> Iterator[bytes]:
        handle = self._existing(key).open("rb")  # opened now: a missing key raises here, not at the first chunk

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(CHUNK):
                    yield chunk

        return chunks()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        folder = self._path(prefix.strip("/"))
        if folder == self.root.resolve():
            raise ValueError("delete_prefix needs a folder inside the store, not its root")
        shutil.rmtree(folder, ignore_errors=True)

    def list_folders(self, prefix: str) -> Iterator[str]:
        folder = self._path(prefix.strip("/"))
        if folder.is_dir():
            yield from sorted(path.name for path in folder.iterdir() if path.is_dir())


class S3ArtifactStore:
    """An S3-compatible bucket (AWS, MinIO): lets api and workers run on different machines."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}

    def put_file(self, key: str, src: Path) -> None:
        self.client.upload_file(str(src), self.bucket, self._key(key))

    def move_in(self, key: str, src: Path) -> None:
        self.put_file(key, src)
        src.unlink(missing_ok=True)

    def fetch(self, key: str, dst: Path) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".fetching-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
            os.replace(tmp, dst)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            if self._missing(exc):
                raise ArtifactNotFoundError(key) from exc
            raise
        return dst

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as exc:
            if self._missing(exc):
                raise ArtifactNotFoundError(key) from exc
            raise
        return body.iter_chunks(CHUNK)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if self._missing(exc):
                return False
            raise

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as exc:
            if self._missing(exc):
                raise ArtifactNotFoundError(key) from exc
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        folder = prefix.strip("/")
        if not folder:
            raise ValueError("delete_prefix needs a folder inside the store, not its root")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(folder) + "/"):  # <= 1000 keys a page
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def list_folders(self, prefix: str) -> Iterator[str]:
        start = self._key(prefix.strip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"][len(start) :].rstrip("/")


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
    return f"{job_artifact_prefix(job_id)}/{name}"


def job_artifact_prefix(job_id: str) -> str:
    """The folder of every artifact of a job (`delete_prefix` removes them all)."""
    return f"jobs/{job_id}"
