"""What a user of the API does: upload, submit, poll, download."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from service.status import JobStatus

TERMINAL = {status.value for status in JobStatus if status.terminal}


def upload(client: httpx.Client, route: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post(route, files={"file": (path.name, handle, "application/octet-stream")})
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def poll(client: httpx.Client, job_id: str, timeout: float = 180, until: set[str] = TERMINAL) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.2)


def download(client: httpx.Client, url: str, destination: Path) -> Path:
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        with destination.open("wb") as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
    return destination
