"""Cheap reads of one job for status polling (`GET /v1/jobs/{id}`, polled by every client that waits for a job).

Prebuilt Core statements on a pooled connection: no ORM session, unit of work or identity map, and no statement
built per request (SQLAlchemy's compiled cache is keyed on the statement object). Rows have the jobs table's
columns as attributes, typed as the ORM reads them (enums, UTC datetimes, parsed JSON).

`read_version` reads only the owner and the job's change markers: every write to a job changes at least one of them
(the worker's progress and step writes renew `heartbeat_at`; claim, finish, fail and cancel change `status`,
`attempt`, `finished_at` or `cancel_requested`), so a reader that rendered the job at the same markers can answer
with that rendering instead of reading and decoding the JSON columns again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, bindparam, select

from service.orm import Job

_JOBS = Job.__table__
MARKERS = (
    _JOBS.c.status,
    _JOBS.c.attempt,
    _JOBS.c.stage,
    _JOBS.c.progress,
    _JOBS.c.cancel_requested,
    _JOBS.c.heartbeat_at,
    _JOBS.c.started_at,
    _JOBS.c.finished_at,
    _JOBS.c.error_code,
)
_JOB_BY_ID = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_VERSION_BY_ID = select(_JOBS.c.owner_id, *MARKERS).where(_JOBS.c.id == bindparam("job_id"))


def read_job(connection: Connection, job_id: str) -> Row | None:
    """The job's row, or None. Owners are not checked here: the caller compares `owner_id`."""
    return connection.execute(_JOB_BY_ID, {"job_id": job_id}).one_or_none()


def read_version(connection: Connection, job_id: str) -> tuple[str, tuple[Any, ...]] | None:
    """(owner_id, change markers) of the job, or None when there is none."""
    row = connection.execute(_VERSION_BY_ID, {"job_id": job_id}).one_or_none()
    return None if row is None else (row[0], tuple(row[1:]))


def version_of(row: Row) -> tuple[Any, ...]:
    """The change markers of a full row, as `read_version` returns them."""
    return tuple(row._mapping[column] for column in MARKERS)
