"""The top of the stack: the `onnx-compress` command (and, later, a Python client of the API).

It may import every layer below it: `app` (FastAPI), `workers` (Celery), `service` and `compression`.
"""
