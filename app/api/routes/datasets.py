"""Upload .npz datasets (calibration, training, evaluation)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from app.api import paths
from app.api.deps import SessionDep, SettingsDep, StoreDep
from app.api.routes.models import UPLOAD_DOC
from app.schemas import ArrayInfo, DatasetOut
from app.uploads import receive_checked
from compression.datasets import LABELS, describe_npz
from service.artifacts import dataset_key
from service.orm import DatasetRecord, new_id

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


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut, openapi_extra=UPLOAD_DOC)
async def upload_dataset(request: Request, settings: SettingsDep, session: SessionDep, store: StoreDep) -> DatasetOut:
    """Multipart field `file`: an .npz with one array per model input (and optional `labels`)."""
    incoming = settings.data_dir / "incoming"
    received, (arrays, n_samples) = await receive_checked(
        request, incoming, settings.max_dataset_bytes, "dataset", describe_npz
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
    )
    await run_in_threadpool(store.move_in, record.storage_key, received.path)
    session.add(record)
    session.commit()
    return dataset_out(record)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep) -> DatasetOut:
    record = session.get(DatasetRecord, dataset_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id!r} not found")
    return dataset_out(record)
