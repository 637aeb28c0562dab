"""The top of the stack: the `onnx-compress` command and a Python client of the API (`Client`).

It may import every layer below it: `app` (FastAPI), `workers` (Celery), `service` and `compression`.
"""

from onnx_compress.client import ApiError, Client, JobFailedError

__all__ = ["ApiError", "Client", "JobFailedError"]
