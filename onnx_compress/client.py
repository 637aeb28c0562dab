"""A Python client of the compression API: upload, submit, wait, download (httpx, synchronous).

    from onnx_compress import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        model = client.upload_model("digits_cnn.onnx")
        job = client.submit(model.id, [{"type": "quantize", "mode": "dynamic"}])
        job = client.wait(job.id, progress=lambda j: print(j.status, j.progress))
        client.download(job.id, "digits_int8.onnx")

Requests answered 429 or 503 are retried (a bounded number of times), waiting what `Retry-After` says.
Any other problem answer raises `ApiError(status, code, detail)` (`AuthError` for a 401: the key is missing,
wrong or revoked).

Lists come a page at a time (`list_jobs`, `list_models`, `list_datasets`: pass `next_cursor` back as `cursor`) or
as one iterator over every page (`iter_jobs`, `iter_models`, `iter_datasets`). `follow(job_id)` reads the job's
events as server-sent events until the job has ended; `delete_job`, `delete_model`, `delete_dataset` delete.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

from service.status import TERMINAL, DeliveryStatus, JobStatus, WebhookEvent

API_KEY_ENV = "ONNX_COMPRESS_API_KEY"
RETRY_STATUSES = frozenset({429, 503})
DEFAULT_RETRY_AFTER_S = 1.0
LONG_POLL_S = 30  # `Prefer: wait` asked by `wait` without a progress callback
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer is still retried after this long


class ApiError(Exception):
    """A non-2xx answer: `status` (HTTP), `code` (stable, from the problem document) and `detail` (for people)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class AuthError(ApiError):
    """401: the server has API keys and this client's key is missing, wrong or revoked."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, code, detail)
        self.args = (
            f"{status} {code}: {detail} (this client sends api_key as 'Authorization: Bearer <key>'; "
            f"pass Client(..., api_key=...) or set ${API_KEY_ENV} for the CLI)",
        )


class JobFailedError(Exception):
    """`wait` saw the job end failed or canceled; the job is in `.job`."""

    def __init__(self, job: Job) -> None:
        reason = f": {job.error.get('code')}: {job.error.get('message')}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{reason}")
        self.job = job


class _Resource(BaseModel):
    """The fields a client relies on; everything else the API returns is kept too (extra='allow')."""

    model_config = ConfigDict(extra="allow")


class Model(_Resource):
    id: str
    filename: str
    size_bytes: int
    sha256: str


class Dataset(_Resource):
    id: str
    n_samples: int


class Job(_Resource):
    id: str
    model_id: str
    status: JobStatus
    stage: str | None = None
    progress: float = 0.0
    error: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = []
    metrics: dict[str, Any] | None = None
    urls: dict[str, str | None] = {}

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobEvent(_Resource):
    id: int
    kind: str
    message: str
    progress: float | None = None
    stage: str | None = None


class WebhookAttempt(_Resource):
    number: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0


class WebhookDelivery(_Resource):
    """One event sent to the job's webhook (`id` is every attempt's `webhook-id` header), with its attempts."""

    id: str
    event: WebhookEvent
    url: str
    status: DeliveryStatus
    attempts: list[WebhookAttempt] = []


Item = TypeVar("Item", bound=_Resource)


class Page(_Resource, Generic[Item]):
    """One page of a list, newest first; `next_cursor` (None on the last page) fetches the next."""

    items: list[Item]
    next_cursor: str | None = None


JobPage = Page[Job]
ModelPage = Page[Model]
DatasetPage = Page[Dataset]


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S)), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date: wait the default
        return DEFAULT_RETRY_AFTER_S


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        body = response.json()
        code, detail = str(body.get("code", "error")), str(body.get("detail", response.text))
    except ValueError:
        code, detail = "error", response.text or response.reason_phrase
    raise (AuthError if response.status_code == 401 else ApiError)(response.status_code, code, detail)


class Client:
    """The API at `base_url` (e.g. http://127.0.0.1:8000), authenticated with `api_key` when given."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_attempts, self.timeout = max(1, max_attempts), timeout
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on 429/503 after `Retry-After`; file bodies are rewound before a retry."""
        files: Mapping[str, Any] | None = kwargs.get("files")
        for attempt in range(1, self.max_attempts + 1):
            if files and attempt > 1:
                for value in files.values():
                    value[1].seek(0)
            response = self.http.request(method, url, **kwargs)
            if response.status_code not in RETRY_STATUSES or attempt == self.max_attempts:
                break
            time.sleep(_retry_after(response))
        _raise_for_problem(response)
        return response

    def _upload(self, route: str, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        with path.open("rb") as handle:
            files = {"file": (path.name, handle, "application/octet-stream")}
            return self._request("POST", route, files=files).json()

    def _upload_or_import(self, route: str, path: str | Path | None, url: str | None) -> dict[str, Any]:
        if (path is None) == (url is None):
            raise ValueError("give either a file path or url=")
        if url is not None:  # the server fetches it: s3://bucket/key or https://...
            return self._request("POST", route, json={"url": url}).json()
        return self._upload(route, path)  # type: ignore[arg-type]

    def upload_model(self, path: str | Path | None = None, *, url: str | None = None) -> Model:
        """Upload an .onnx model, or have the server import it from `url` (`s3://bucket/key`, `https://...`);
        its id goes into `submit`."""
        return Model.model_validate(self._upload_or_import("/v1/models", path, url))

    def upload_dataset(self, path: str | Path | None = None, *, url: str | None = None) -> Dataset:
        """Upload an .npz dataset (calibration, train or eval data), or have the server import it from `url`."""
        return Dataset.model_validate(self._upload_or_import("/v1/datasets", path, url))

    def submit(
        self,
        model_id: str,
        steps: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        datasets: Mapping[str, str | None] | None = None,
        idempotency_key: str | None = None,
        webhook: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue a job: `steps` is a list of steps or a spec `{"steps": [...]}`; `datasets` maps a role
        (calibration, train, eval) to a dataset id; `webhook` `{"url": ..., "events": [...]}` to be told."""
        step_list = list(steps["steps"]) if isinstance(steps, Mapping) else list(steps)
        body: dict[str, Any] = {"model_id": model_id, "steps": step_list, "datasets": dict(datasets or {})}
        if webhook is not None:
            body["webhook"] = dict(webhook)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.model_validate(self._request("POST", "/v1/jobs", json=body, headers=headers).json())

    def get(self, job_id: str, prefer_wait: int | None = None) -> Job:
        """The job now; with `prefer_wait`, a server that supports `Prefer: wait` answers once the job ended
        or that many seconds passed (others answer at once)."""
        headers = {"Prefer": f"wait={prefer_wait}"} if prefer_wait else {}
        timeout = self.timeout + (prefer_wait or 0)
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}", headers=headers, timeout=timeout).json())

    def wait(
        self,
        job_id: str,
        progress: Callable[[Job], object] | None = None,
        timeout: float | None = None,
        poll: float = 1.0,
        raise_on_failure: bool = True,
    ) -> Job:
        """Until the job ends: `progress(job)` is called on every change; a failed or canceled job raises
        `JobFailedError` unless `raise_on_failure=False`; `TimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[object, ...] | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            # with a progress callback the server is asked to hold the request about `poll` seconds (so changes
            # are shown), else up to 30 s; either way a job that ends is answered at once (`Prefer: wait`)
            longest = math.ceil(poll) if progress is not None else LONG_POLL_S
            long_poll = max(1, min(longest, math.ceil(remaining) if remaining is not None else longest))
            started = time.monotonic()
            job = self.get(job_id, prefer_wait=long_poll)
            state = (job.status, job.progress, job.stage)
            if progress is not None and state != seen:
                progress(job)
            seen = state
            if job.terminal:
                if raise_on_failure and job.status != JobStatus.SUCCEEDED:
                    raise JobFailedError(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            if time.monotonic() - started < poll:  # the server answered at once (no long-poll): pace the polls
                time.sleep(poll)

    def download(self, job_id: str, dest: str | Path, artifact: str = "model.onnx") -> Path:
        """Stream an artifact of a succeeded job (`model.onnx` or `metrics.json`) to `dest`."""
        dest = Path(dest)
        url = f"/v1/jobs/{job_id}/artifacts/{artifact}"
        for attempt in range(1, self.max_attempts + 1):
            with self.http.stream("GET", url) as response:
                if response.status_code in RETRY_STATUSES and attempt < self.max_attempts:
                    time.sleep(_retry_after(response))
                    continue
                _raise_for_problem(response)
                dest.parent.mkdir(parents=True, exist_ok=True)
                partial = dest.with_name(dest.name + ".part")
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                partial.replace(dest)
                return dest
        raise AssertionError("unreachable")

    def metrics(self, job_id: str) -> dict[str, Any]:
        """The job's `metrics.json`."""
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts/metrics.json").json()

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (409 `job_finished` if it already ended)."""
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: str, after: int | None = None) -> list[JobEvent]:
        """The job's events in order; `after` an event id: only later ones."""
        params = {"after": after} if after is not None else {}
        return [
            JobEvent.model_validate(e) for e in self._request("GET", f"/v1/jobs/{job_id}/events", params=params).json()
        ]

    def webhook_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The job's webhook deliveries, oldest first, each with its attempts."""
        answer = self._request("GET", f"/v1/jobs/{job_id}/webhook-deliveries").json()
        return [WebhookDelivery.model_validate(d) for d in answer]

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 20, cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; pass `next_cursor` back as `cursor` for the next."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        return JobPage.model_validate(self._request("GET", "/v1/jobs", params=params).json())

    @staticmethod
    def _page_params(limit: int, cursor: str | None, **filters: Any) -> dict[str, Any]:
        params = {"limit": limit, **{name: str(value) for name, value in filters.items() if value}}
        return {**params, "cursor": cursor} if cursor else params

    def list_models(self, limit: int = 20, cursor: str | None = None) -> ModelPage:
        """One page of uploaded models, newest first; pass `next_cursor` back as `cursor` for the next."""
        return ModelPage.model_validate(
            self._request("GET", "/v1/models", params=self._page_params(limit, cursor)).json()
        )

    def list_datasets(self, limit: int = 20, cursor: str | None = None) -> DatasetPage:
        """One page of uploaded datasets, newest first; pass `next_cursor` back as `cursor` for the next."""
        response = self._request("GET", "/v1/datasets", params=self._page_params(limit, cursor))
        return DatasetPage.model_validate(response.json())

    def iter_jobs(self, status: JobStatus | str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job (of this status), newest first, fetched a page at a time."""
        return self._iterate(lambda cursor: self.list_jobs(status=status, limit=page_size, cursor=cursor))

    def iter_models(self, page_size: int = 100) -> Iterator[Model]:
        """Every uploaded model, newest first, fetched a page at a time."""
        return self._iterate(lambda cursor: self.list_models(limit=page_size, cursor=cursor))

    def iter_datasets(self, page_size: int = 100) -> Iterator[Dataset]:
        """Every uploaded dataset, newest first, fetched a page at a time."""
        return self._iterate(lambda cursor: self.list_datasets(limit=page_size, cursor=cursor))

    @staticmethod
    def _iterate(fetch: Callable[[str | None], Page[Item]]) -> Iterator[Item]:
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_model(self, model_id: str) -> Model:
        return Model.model_validate(self._request("GET", f"/v1/models/{model_id}").json())

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._request("GET", f"/v1/datasets/{dataset_id}").json())

    def delete_job(self, job_id: str) -> None:
        """Delete a job with its artifacts; a queued or running one is canceled first."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def delete_model(self, model_id: str) -> None:
        """Delete an uploaded model (409 `model_in_use` while a queued or running job needs it)."""
        self._request("DELETE", f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (409 `dataset_in_use` while a queued or running job needs it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def follow(self, job_id: str, after: int | None = None) -> Iterator[JobEvent]:
        """The job's events as they happen (server-sent events), from the first (or after event id `after`) until
        the job has ended; a stream the server closes early (its length is bounded) is resumed where it stopped."""
        last = after
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            terminal = False
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
                if response.status_code == 204:  # the job has ended and nothing is after `last`
                    return
                _raise_for_problem(response)
                for data in _sse_data(response.iter_lines()):
                    event = JobEvent.model_validate(json.loads(data))
                    last = event.id
                    terminal = event.kind in TERMINAL
                    yield event
            if terminal:
                return


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each server-sent event in a stream (comments, ids and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))
