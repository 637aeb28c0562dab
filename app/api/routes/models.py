"""Upload and inspect ONNX models."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from app.api import paths
from app.api.deps import SessionDep, SettingsDep, StoreDep
from app.schemas import ModelOut
from app.uploads import receive_checked
from compression.model_info import ModelInfo, validate_model
from service.artifacts import model_key
from service.orm import ModelRecord, new_id

router = APIRouter(prefix=paths.MODELS, tags=["models"])

UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def model_out(record: ModelRecord) -> ModelOut:
    info = ModelInfo.model_validate(record.info)
    return ModelOut(
        id=record.id,
        filename=record.filename,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        opset=info.opset,
        inputs=info.inputs,
        outputs=info.outputs,
        op_counts=info.op_counts,
        created_at=record.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelOut, openapi_extra=UPLOAD_DOC)
async def upload_model(request: Request, settings: SettingsDep, session: SessionDep, store: StoreDep) -> ModelOut:
    """Multipart field `file`: an .onnx model, streamed to disk and validated with onnx.checker."""
    incoming = settings.data_dir / "incoming"
    received, info = await receive_checked(request, incoming, settings.max_model_bytes, "model", validate_model)
    model_id = new_id()
    record = ModelRecord(
        id=model_id,
        filename=received.filename,
        sha256=received.sha256,
        size_bytes=received.size_bytes,
        info=info.model_dump(),
        storage_key=model_key(model_id),
    )
    await run_in_threadpool(store.move_in, record.storage_key, received.path)
    session.add(record)
    session.commit()
    return model_out(record)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, session: SessionDep) -> ModelOut:
    record = session.get(ModelRecord, model_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id!r} not found")
    return model_out(record)
