"""URL paths of the API: the version prefix is stated here once; routers and links build on it."""

from __future__ import annotations

API_PREFIX = "/v1"

MODELS = f"{API_PREFIX}/models"
DATASETS = f"{API_PREFIX}/datasets"
JOBS = f"{API_PREFIX}/jobs"


def job_path(job_id: str) -> str:
    return f"{JOBS}/{job_id}"
