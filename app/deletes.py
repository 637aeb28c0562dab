"""The HTTP side of deleting (service/lifecycle.py does the work): an upload a queued or running job needs is a
409 naming the job; a backing store that fails mid-delete is a 503 (retry: nothing is left half-deleted)."""

from __future__ import annotations

import logging

from fastapi import status
from sqlalchemy.orm import Session

from app.errors import ApiError
from service.artifacts import ArtifactStore
from service.lifecycle import Upload, delete_upload, jobs_using, lock_for_delete, upload_kind
from service.tenants import Principal

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def service_unavailable(what: str, exc: Exception) -> ApiError:
    log.exception("deleting %s failed", what)
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "store_unavailable",
        f"could not delete {what}: the artifact store or database did not answer ({type(exc).__name__}); "
        "it is still there, retry the delete",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def delete_unused_upload(session: Session, store: ArtifactStore, principal: Principal, record: Upload) -> None:
    """Delete the upload unless a queued or running job needs it (409 naming the job: the caller's own by id,
    another tenant's only as such)."""
    kind = upload_kind(record)
    lock_for_delete(session, record)  # a job being created that names it commits first, or waits for this delete
    users = jobs_using(session, kind, record.id)
    if users:
        first = users[0]
        who = f"job {first.id!r} ({first.status})" if principal.can_see(first.owner_id) else "a job of another tenant"
        more = f" and {len(users) - 1} more" if len(users) > 1 else ""
        raise ApiError(
            status.HTTP_409_CONFLICT,
            f"{kind}_in_use",
            f"{kind} {record.id!r} is used by {who}{more}: cancel or delete the job, or wait until it has ended",
        )
    try:
        delete_upload(session, store, record)
    except Exception as exc:
        session.rollback()
        raise service_unavailable(f"{kind} {record.id!r}", exc) from exc
