"""A job's webhook deliveries: each event sent to its webhook, with every attempt."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api import paths
from app.api.deps import PrincipalDep, SessionDep
from app.errors import ApiError, problem_responses
from app.schemas import RESOURCE_ID, WebhookAttemptOut, WebhookDeliveryOut
from service.orm import Job
from service.status import DeliveryStatus
from service.tenants import get_owned
from service.webhooks import deliveries_of

router = APIRouter(prefix=paths.JOBS, tags=["jobs"])

JobIdPath = Annotated[str, Path(pattern=RESOURCE_ID, description="a job id from POST /v1/jobs")]


@router.get(
    "/{job_id}/webhook-deliveries",
    response_model=list[WebhookDeliveryOut],
    operation_id="list_job_webhook_deliveries",
    responses=problem_responses(404, 422),
)
def list_webhook_deliveries(
    job_id: JobIdPath, session: SessionDep, principal: PrincipalDep
) -> list[WebhookDeliveryOut]:
    """The job's webhook deliveries, oldest first: one per event sent, each with its attempts (HTTP status or
    error, time). Empty when the job has no webhook or no event was due yet."""
    if get_owned(session, Job, job_id, principal) is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "job_not_found", f"job {job_id!r} not found")
    return [
        WebhookDeliveryOut(
            id=delivery.id,
            event=delivery.event,
            url=delivery.url,
            status=delivery.status,
            next_attempt_at=delivery.next_attempt_at if delivery.status == DeliveryStatus.PENDING else None,
            created_at=delivery.created_at,
            finished_at=delivery.finished_at,
            attempts=[
                WebhookAttemptOut(
                    number=attempt.number,
                    started_at=attempt.started_at,
                    duration_ms=attempt.duration_ms,
                    status_code=attempt.status_code,
                    error=attempt.error,
                )
                for attempt in attempts
            ],
        )
        for delivery, attempts in deliveries_of(session, job_id)
    ]
