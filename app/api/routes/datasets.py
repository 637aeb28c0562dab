"""Upload, list, inspect and delete .npz datasets (calibration, training, evaluation)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import paths
from app.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from app.api.routes.models import UPLOAD_DOC, Cursor, PageLimit, store_with_record
from app.deletes import delete_unused_upload
from app.errors import ApiError, problem_responses
from app.pagination import fetch_page
from app.schemas import RESOURCE_ID, ArrayInfo, DatasetOut, DatasetPage
from app.upload_checks import check_dataset
from app.uploads import receive_checked
from compression.datasets import LABELS
from service.artifacts import dataset_key
from service.orm import DatasetRecord, new_id
from service.tenants import Principal, get_owned

router = APIRouter(prefix=paths.DATASETS, tags=["datasets"])


def dataset_out(record: DatasetRecord) -> DatasetOut:
    return DatasetOut(
        id=record.id,
        filename=record.filename,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        arrays={name: ArrayInfo(**info) for name, info in record.arrays.items()},
        n_samples=record.n_samples,
        has_labels=LABELS in record.arrays,
        created_at=record.created_at,
    )


DatasetIdPath = Annotated[str, Path(pattern=RESOURCE_ID, description="a dataset id from POST /v1/datasets")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_DOC,
    operation_id="create_dataset",
    responses=problem_responses(413, 422),
)
async def upload_dataset(
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
    principal: PrincipalDep,
) -> DatasetOut:
    """Multipart field `file`: an .npz with one array per model input (and optional `labels`). Or JSON
    `{"url": "s3://bucket/key" | "https://..."}`: the dataset fetched from there, with the same limits and checks."""
    incoming = settings.data_dir / "incoming"
    check = partial(check_dataset, settings=settings)
    received, (arrays, n_samples) = await receive_checked(
        request, incoming, settings.max_dataset_bytes, "dataset", check
    )
    dataset_id = new_id()
    record = DatasetRecord(
        id=dataset_id,
        filename=received.filename,
        sha256=received.sha256,
        size_bytes=received.size_bytes,
        arrays=arrays,
        n_samples=n_samples,
        storage_key=dataset_key(dataset_id),
        owner_id=principal.tenant_id,
    )
    await run_in_threadpool(store_with_record, session, store, record, record.storage_key, received.path)
    response.headers["Location"] = f"{paths.DATASETS}/{dataset_id}"
    return dataset_out(record)


@router.get("", response_model=DatasetPage, operation_id="list_datasets", responses=problem_responses(422))
def list_datasets(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, limit: PageLimit = 20, cursor: Cursor = None
) -> DatasetPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = fetch_page(session, DatasetRecord, principal, min(limit, settings.jobs_page_limit), cursor)
    return DatasetPage(items=[dataset_out(record) for record in rows], next_cursor=next_cursor)


def _owned_dataset(session: Session, dataset_id: str, principal: Principal) -> DatasetRecord:
    record = get_owned(session, DatasetRecord, dataset_id, principal)
    if record is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "dataset_not_found", f"dataset {dataset_id!r} not found")
    return record


@router.get(
    "/{dataset_id}", response_model=DatasetOut, operation_id="get_dataset", responses=problem_responses(404, 422)
)
def get_dataset(dataset_id: DatasetIdPath, session: SessionDep, principal: PrincipalDep) -> DatasetOut:
    return dataset_out(_owned_dataset(session, dataset_id, principal))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_dataset",
    responses=problem_responses(404, 409, 422, 503),
)
def delete_dataset(
    dataset_id: DatasetIdPath, session: SessionDep, store: StoreDep, principal: PrincipalDep
) -> Response:
    """Delete the dataset and its stored file; 409 (naming the job) while a queued or running job uses it."""
    delete_unused_upload(session, store, principal, _owned_dataset(session, dataset_id, principal))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
