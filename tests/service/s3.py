"""A real S3 endpoint for tests: moto's threaded server on a free port, with credentials in the environment."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.service.stack import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3(*buckets: str) -> Iterator[str]:
    """The endpoint URL of a running moto S3 holding `buckets` (empty), S3_ENV set while it runs."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in S3_ENV.items():
                patch.setenv(key, value)
            client = boto3.client("s3", endpoint_url=endpoint)
            for bucket in buckets:
                client.create_bucket(Bucket=bucket)
            yield endpoint
    finally:
        server.stop()
