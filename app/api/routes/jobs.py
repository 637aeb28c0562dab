"""Submit, poll, list, cancel, delete jobs, follow their events and download their artifacts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from enum import StrEnum
from typing import Annotated, cast

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from app import job_read_cache, sse
from app.api import paths
from app.api.deps import (
    ApiKeyDep,
    BearerDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    api_key_token,
    principal_on,
)
from app.deletes import service_unavailable
from app.errors import ApiError, problem_responses
from app.job_read_cache import Rendered, RenderedJobs
from app.job_views import event_out, job_out
from app.pagination import fetch_page
from app.public_urls import absolute_url
from app.schemas import RESOURCE_ID, JobCreate, JobEventOut, JobOut, JobPage
from compression.datasets import check_compatible
from compression.errors import DatasetMismatchError
from compression.model_info import ModelInfo
from service import job_reads, job_store, lifecycle
from service.artifacts import job_artifact_key
from service.db import get_engine
from service.job_store import CancelOutcome
from service.orm import DatasetRecord, Job, JobEvent, ModelRecord, new_id
from service.outbound import OutboundURLRefusedError
from service.queue import enqueue_job
from service.settings import Settings
from service.status import EventKind, JobStatus, StepState
from service.tenants import Principal, get_owned
from service.webhooks import WebhooksDisabledError, job_webhook, publish_for_job

router = APIRouter(prefix=paths.JOBS, tags=["jobs"])
# GET /v1/jobs/{id}, included without the router-level auth dependency: it authenticates in the same thread hop
# and on the same connection as its read (status polls are the most frequent request)
status_router = APIRouter(prefix=paths.JOBS, tags=["jobs"])


class ArtifactName(StrEnum):
    MODEL = "model.onnx"
    METRICS = "metrics.json"


PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)  # RFC 7240 `Prefer: wait=N`
PREFER_POLL_S = 0.25  # how often a long-poll re-reads the job

ARTIFACTS = {"model.onnx": "application/octet-stream", "metrics.json": "application/json"}

JobIdPath = Annotated[str, Path(pattern=RESOURCE_ID, description="a job id from POST /v1/jobs")]
ARTIFACT_RESPONSES = {
    200: {
        "description": "`model.onnx` as bytes (application/octet-stream); `metrics.json` as the job's metrics",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/JobMetricsOut"}},
        },
    },
    **problem_responses(404, 422),
}


def _unprocessable(message: str, code: str = "invalid_reference") -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, code, message)


def _not_found(job_id: str) -> ApiError:
    return ApiError(status.HTTP_404_NOT_FOUND, "job_not_found", f"job {job_id!r} not found")


def _get_job(session: SessionDep, job_id: str, principal: Principal) -> Job:
    job = get_owned(session, Job, job_id, principal)
    if job is None:
        raise _not_found(job_id)
    return job


def _check_steps(session: SessionDep, settings: SettingsDep, body: JobCreate, principal: Principal) -> None:
    """Limits and references inside the steps: refused now rather than accepted and failed later."""
    for index, step in enumerate(body.steps):
        if step.type != "distill":
            continue
        epochs, limit = getattr(step, "epochs", 0), settings.distill.max_epochs
        if epochs > limit:
            raise _unprocessable(
                f"steps.{index}.epochs: {epochs} is over the limit of {limit} (setting DISTILL_MAX_EPOCHS)",
                "limit_exceeded",
            )
        student = getattr(step, "student", "current")
        if student != "current" and (
            not re.fullmatch(RESOURCE_ID, student) or get_owned(session, ModelRecord, student, principal) is None
        ):
            raise _unprocessable(
                f"steps.{index}.student: model {student!r} not found: give 'current' or an id from POST {paths.MODELS}"
            )


def _check_references(session: SessionDep, body: JobCreate, principal: Principal) -> None:
    """Unknown ids and datasets that cannot feed the model are refused before anything is queued."""
    students = [getattr(step, "student", "current") for step in body.steps]
    models = [body.model_id, *(student for student in students if student != "current")]
    lifecycle.hold_uploads(session, models, body.datasets.model_dump().values())  # no delete under the new job
    model = get_owned(
        session, ModelRecord, body.model_id, principal
    )  # ids were checked against RESOURCE_ID by JobCreate
    if model is None:
        raise _unprocessable(f"model_id {body.model_id!r} not found: upload the model with POST {paths.MODELS} first")
    inputs = ModelInfo.model_validate(model.info).inputs
    for role, dataset_id in body.datasets.model_dump().items():
        if dataset_id is None:
            continue
        dataset = get_owned(session, DatasetRecord, dataset_id, principal)
        if dataset is None:
            raise _unprocessable(f"datasets.{role}: dataset {dataset_id!r} not found")
        try:
            check_compatible(dataset.arrays, inputs)
        except DatasetMismatchError as exc:
            raise _unprocessable(f"datasets.{role} ({dataset_id}): {exc.message}") from exc


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    operation_id="create_job",
    responses=problem_responses(409, 413, 422, 503),
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobOut:
    """Queue a job. With an `Idempotency-Key` header, the same key and body return the same job."""
    if len(body.steps) > settings.max_steps:
        raise _unprocessable(
            f"{len(body.steps)} steps given; at most {settings.max_steps} (setting MAX_STEPS)", "limit_exceeded"
        )
    request_hash = hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    if idempotency_key:
        existing = session.scalar(_idempotent(principal, idempotency_key))
        if existing is not None:
            return _replay(existing, request_hash, response)
    _check_references(session, body, principal)
    _check_steps(session, settings, body, principal)
    webhook = _job_webhook(settings, body)
    steps = [
        {
            "index": i,
            "type": step.type,
            "config": step.model_dump(mode="json"),
            "status": StepState.PENDING,
            "metrics": None,
        }
        for i, step in enumerate(body.steps)
    ]
    job = Job(
        id=new_id(),
        model_id=body.model_id,
        spec={"steps": [step["config"] for step in steps]},
        datasets=body.datasets.model_dump(),
        steps=steps,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        owner_id=principal.tenant_id,
        webhook=webhook,
    )
    session.add(job)
    job_store.add_event(session, job.id, EventKind.QUEUED, "job queued")
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        existing = session.scalar(_idempotent(principal, idempotency_key))
        if existing is None:
            raise
        return _replay(existing, request_hash, response)
    response.headers["Location"] = paths.job_path(job.id)
    try:
        enqueue_job(settings, job.id)
    except Exception as exc:  # an outbox row: the workers' recovery sweep publishes it once the broker answers
        cause = type(exc.__cause__ or exc).__name__
        why = f"the job broker did not answer ({cause}); the job stays queued and is published when it answers again"
        job_store.mark_unpublished(session, job.id, why)
        session.refresh(job)
    return job_out(job)


def _job_webhook(settings: SettingsDep, body: JobCreate) -> dict | None:
    """The job's webhook (its URL checked against the outbound rules now), or the server's default."""
    url, events = (body.webhook.url, body.webhook.events) if body.webhook else (None, None)
    try:
        return job_webhook(settings, url, events, absolute_url(paths.JOBS) + "/")
    except OutboundURLRefusedError as exc:
        raise _unprocessable(f"webhook.url: {exc}", "webhook_url_refused") from exc
    except WebhooksDisabledError as exc:
        raise _unprocessable(f"webhook: {exc}", "webhooks_disabled") from exc


def _idempotent(principal: Principal, idempotency_key: str | None) -> Select[tuple[Job]]:
    """The caller's own job under this key (keys are per tenant; an admin's too)."""
    return select(Job).where(Job.owner_id == principal.tenant_id, Job.idempotency_key == idempotency_key)


def _replay(job: Job, request_hash: str, response: Response) -> JobOut:
    if job.request_hash != request_hash:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "idempotency_key_reused",
            "Idempotency-Key was already used with a different request body; use a new key for a new job",
        )
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = paths.job_path(job.id)
    return job_out(job)


@router.get("", response_model=JobPage, operation_id="list_jobs", responses=problem_responses(422))
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1)] = 20,
    cursor: str | None = None,
) -> JobPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    where = [Job.status == status_filter] if status_filter else []
    rows, next_cursor = fetch_page(session, Job, principal, min(limit, settings.jobs_page_limit), cursor, *where)
    return JobPage(items=[job_out(job) for job in rows], next_cursor=next_cursor)


@status_router.get(
    "/{job_id}", response_model=JobOut, operation_id="get_job", responses=problem_responses(401, 404, 422)
)
async def get_job(
    job_id: JobIdPath,
    request: Request,
    settings: SettingsDep,
    bearer: BearerDep,
    api_key: ApiKeyDep,
    prefer: Annotated[
        str | None, Header(max_length=255, description="`wait=N`: answer once the job ended or N seconds passed")
    ] = None,
) -> Response:
    """The job. With `Prefer: wait=N` the answer comes when the job is terminal or after N seconds (at most
    the MAX_PREFER_WAIT_SECONDS setting), and `Preference-Applied: wait=N` says the wait that was applied.

    Status reads are polled by every waiting client, so they are kept cheap: one thread hop reads the job's change
    markers with a prebuilt statement (service/job_reads.py) and answers with the rendering made at the same markers
    (app/job_read_cache.py), or reads and renders it (no second validation by FastAPI); a long-poll waits on the
    event loop, holding no thread."""
    rendered = job_read_cache.for_app(request.app, settings)
    token = api_key_token(bearer, api_key)
    terminal, body = await run_in_threadpool(_job_json, settings, job_id, token, rendered)
    match = PREFER_WAIT.search(prefer or "")
    if match is None or settings.max_prefer_wait_seconds == 0:
        return Response(body, media_type="application/json")
    wait_s = min(int(match.group(1)[:6]), settings.max_prefer_wait_seconds)
    deadline = time.monotonic() + wait_s
    while not terminal and time.monotonic() < deadline:
        await asyncio.sleep(min(PREFER_POLL_S, max(deadline - time.monotonic(), 0)))
        terminal, body = await run_in_threadpool(_job_json, settings, job_id, token, rendered)
    return Response(body, media_type="application/json", headers={"Preference-Applied": f"wait={wait_s}"})


def _job_json(settings: Settings, job_id: str, token: bytes, rendered: RenderedJobs | None) -> tuple[bool, bytes]:
    """(whether the job has ended, its JobOut as JSON) for the key's tenant (401 for a wrong key); another tenant's
    job is not found."""
    key = (job_id, absolute_url(""))
    with get_engine(settings).connect() as connection:
        principal = principal_on(connection, settings, token)
        if rendered is not None:
            head = job_reads.read_version(connection, job_id)
            if head is None or not principal.can_see(head[0]):
                raise _not_found(job_id)
            hit = rendered.get(key, head[1])
            if hit is not None:
                return hit.terminal, hit.body
        row = job_reads.read_job(connection, job_id)
    if row is None or not principal.can_see(row.owner_id):
        raise _not_found(job_id)
    job = job_out(cast(Job, row))  # a row of the jobs table has the attributes job_out reads
    entry = Rendered(job_reads.version_of(row), job.status.terminal, job.model_dump_json().encode())
    if rendered is not None:
        rendered.put(key, entry)
    return entry.terminal, entry.body


@router.get(
    "/{job_id}/events",
    response_model=list[JobEventOut],
    operation_id="list_job_events",
    responses={**sse.RESPONSES, **problem_responses(404, 422, 503)},
)
def get_events(
    job_id: JobIdPath,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="only events with a larger id")] = 0,
    last_event_id: Annotated[
        str | None, Header(max_length=32, description="event stream only: resume after this event id (over `after`)")
    ] = None,
) -> list[JobEventOut] | Response:
    """The job's events in order. With `Accept: text/event-stream`, a stream of server-sent events that follows
    the job until it has ended (see app/sse.py); otherwise the JSON list of the events recorded so far."""
    _get_job(session, job_id, principal)
    if sse.wants_event_stream(request.headers.get("accept")):
        start = sse.start_after(after, last_event_id)
        session.close()  # the stream reads with sessions of its own; this one is not held while it lasts
        if not sse.has_more(settings, job_id, start):
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        return sse.event_stream_response(settings, job_id, start)
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
    return [event_out(event) for event in session.scalars(query)]


@router.post(
    "/{job_id}/cancel", response_model=JobOut, operation_id="cancel_job", responses=problem_responses(404, 409, 422)
)
def cancel_job(job_id: JobIdPath, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> JobOut:
    """A queued job ends `canceled` and never runs; a running one stops at its next check."""
    _get_job(session, job_id, principal)  # another tenant's job is not found, and not canceled
    outcome = job_store.request_cancel(session, job_id)
    if outcome == CancelOutcome.CANCELED:
        publish_for_job(settings, job_id)  # job.canceled (a running job's comes from its worker)
    if outcome == CancelOutcome.MISSING:
        raise _not_found(job_id)
    job = _get_job(session, job_id, principal)
    session.refresh(job)
    if outcome == CancelOutcome.FINISHED:
        raise ApiError(
            status.HTTP_409_CONFLICT, "job_finished", f"job {job_id!r} already {job.status}; nothing to cancel"
        )
    return job_out(job)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_job",
    responses=problem_responses(404, 422, 503),
)
def delete_job(
    job_id: JobIdPath, session: SessionDep, settings: SettingsDep, store: StoreDep, principal: PrincipalDep
) -> Response:
    """Delete the job with its artifacts, events and work files. A queued job is canceled first (it never runs);
    a running one is asked to stop and given DELETE_WAIT_SECONDS to do so."""
    _get_job(session, job_id, principal)  # another tenant's job is not found, and not deleted
    try:
        deleted = lifecycle.delete_job(session, store, settings, job_id)
    except Exception as exc:
        session.rollback()
        raise service_unavailable("the job", exc) from exc
    if not deleted:
        raise _not_found(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=StreamingResponse,
    operation_id="download_job_artifact",
    responses=ARTIFACT_RESPONSES,
)
def get_artifact(
    job_id: JobIdPath, name: ArtifactName, session: SessionDep, store: StoreDep, principal: PrincipalDep
) -> StreamingResponse:
    """`model.onnx` (the compressed model, bytes) or `metrics.json`, once the job succeeded."""
    job = _get_job(session, job_id, principal)
    key = job_artifact_key(job.id, name)
    if job.status != JobStatus.SUCCEEDED or not store.exists(key):
        raise ApiError(
            status.HTTP_404_NOT_FOUND, "artifact_not_ready", f"{name} does not exist yet: the job is {job.status}"
        )
    headers = {
        "Content-Length": str(store.size(key)),
        "Content-Disposition": f'attachment; filename="{job.id}-{name}"',
    }
    return StreamingResponse(store.stream(key), media_type=ARTIFACTS[name.value], headers=headers)
