"""A job's HTML report, rendered from what the job store holds, and the step schema the console validates with."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from fastapi.responses import HTMLResponse

from app.api import paths
from app.api.deps import PrincipalDep, SessionDep
from app.errors import ApiError, problem_responses
from app.schemas import RESOURCE_ID
from compression.datasets import LABELS
from compression.report import ArraySummary, DatasetSummary, ReportContext, collect_versions, render_report
from compression.spec import step_json_schema
from service.orm import DatasetRecord, Job, ModelRecord
from service.tenants import get_owned

router = APIRouter(tags=["report"])

STEPS_SCHEMA = f"{paths.API_PREFIX}/steps/schema"


def stored_metrics(job: Job) -> dict[str, Any] | None:
    """The job's metrics when it finished; else the steps that did finish (a partial report)."""
    if job.metrics:
        return job.metrics
    finished = [step["metrics"] for step in job.steps if step.get("metrics")]
    return {"steps": finished} if finished else None


def dataset_summaries(session: SessionDep, job: Job) -> list[DatasetSummary]:
    """Shapes and sample counts from the stored dataset records (the uploads are not read again)."""
    summaries = []
    for role, dataset_id in job.datasets.items():
        if dataset_id is None:
            continue
        record = session.get(DatasetRecord, dataset_id)
        if record is None:
            summaries.append(DatasetSummary(role=role, name=f"{dataset_id} (record gone)"))
            continue
        summaries.append(
            DatasetSummary(
                role=role,
                name=record.filename,
                n_samples=record.n_samples,
                arrays={name: ArraySummary(**info) for name, info in record.arrays.items()},
                has_labels=LABELS in record.arrays,
            )
        )
    return summaries


def report_context(session: SessionDep, job: Job) -> ReportContext:
    model = session.get(ModelRecord, job.model_id)
    error = f"{job.error_code}: {job.error_message or ''}".rstrip(": ") if job.error_code else None
    return ReportContext(
        title=model.filename if model else job.model_id,
        job_id=job.id,
        status=str(job.status),
        error=error,
        created_at=job.created_at.isoformat() if job.created_at else None,
        spec=job.spec,
        datasets=dataset_summaries(session, job),
        versions=collect_versions(),
    )


@router.get(
    f"{paths.JOBS}/{{job_id}}/report",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}, "description": "self-contained page (no scripts, no network)"},
        **problem_responses(404, 422),
    },
)
def get_report(
    job_id: Annotated[str, Path(pattern=RESOURCE_ID)], session: SessionDep, principal: PrincipalDep
) -> HTMLResponse:
    """The job's report as one self-contained HTML page; a queued, running or failed job gets what exists so far."""
    job = get_owned(session, Job, job_id, principal)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "job_not_found", f"job {job_id!r} not found")
    html = render_report(stored_metrics(job), report_context(session, job))
    headers = {"Content-Disposition": f'inline; filename="{job.id}-report.html"', "Cache-Control": "no-store"}
    return HTMLResponse(html, headers=headers)


@router.get(STEPS_SCHEMA)
def get_steps_schema() -> dict[str, Any]:
    """JSON schema of one step (`properties.step`), as the API validates `steps[*]`."""
    return step_json_schema()
