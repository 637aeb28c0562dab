"""The top of the stack: the `onnx-compress` command and a Python client of the API (`Client`).

It may import every layer below it: `app` (FastAPI), `workers` (Celery), `service` and `compression`.
The client (httpx, pydantic) is imported on first use of a name below, so the CLI's service commands start
without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnx_compress.client import ApiError, AuthError, Client, JobFailedError

__all__ = ["ApiError", "AuthError", "Client", "JobFailedError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("onnx_compress.client"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
