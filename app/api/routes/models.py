"""Upload, list, inspect and delete ONNX models."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import paths
from app.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from app.deletes import delete_unused_upload
from app.errors import ApiError, problem_responses
from app.pagination import fetch_page
from app.schemas import RESOURCE_ID, ModelOut, ModelPage
from app.upload_checks import check_model
from app.uploads import receive_checked
from app.url_import import UrlImport
from compression.model_info import ModelInfo
from service.artifacts import ArtifactStore, model_key
from service.orm import ModelRecord, new_id
from service.tenants import Principal, get_owned

router = APIRouter(prefix=paths.MODELS, tags=["models"])

UPLOAD_DOC = {
    "requestBody": {
        # one of the two bodies is required (422 without), but openapi-python-client (0.29) generates code that
        # does not import for a *required* body with two media types (its issue #1451): declared optional
        "required": False,
        "description": 'the file as multipart/form-data (field `file`), or JSON `{"url": ...}` to import it',
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                },
                "encoding": {"file": {"contentType": "application/octet-stream"}},
            },
            # or import the file from where it lives (app/url_import.py)
            "application/json": {"schema": UrlImport.model_json_schema()},
        },
    }
}

ModelIdPath = Annotated[str, Path(pattern=RESOURCE_ID, description="a model id from POST /v1/models")]
PageLimit = Annotated[int, Query(ge=1, description="items per page (at most the JOBS_PAGE_LIMIT setting)")]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")]


def store_with_record(session: Session, store: ArtifactStore, record: object, key: str, src: object) -> None:
    """Move the upload into the store and commit its row; if the row cannot be written the stored file is
    removed again (never a file without a row)."""
    store.move_in(key, src)  # type: ignore[arg-type]
    try:
        session.add(record)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete(key)
        raise


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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    openapi_extra=UPLOAD_DOC,
    operation_id="create_model",
    responses=problem_responses(413, 422),
)
async def upload_model(
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
    principal: PrincipalDep,
) -> ModelOut:
    """Multipart field `file`: an .onnx model, streamed to disk and validated with onnx.checker. Or JSON
    `{"url": "s3://bucket/key" | "https://..."}`: the model fetched from there, with the same limits and checks."""
    incoming = settings.data_dir / "incoming"
    check = partial(check_model, settings=settings)
    received, info = await receive_checked(request, incoming, settings.max_model_bytes, "model", check)
    model_id = new_id()
    record = ModelRecord(
        id=model_id,
        filename=received.filename,
        sha256=received.sha256,
        size_bytes=received.size_bytes,
        info=info.model_dump(),
        storage_key=model_key(model_id),
        owner_id=principal.tenant_id,
    )
    await run_in_threadpool(store_with_record, session, store, record, record.storage_key, received.path)
    response.headers["Location"] = f"{paths.MODELS}/{model_id}"
    return model_out(record)


@router.get("", response_model=ModelPage, operation_id="list_models", responses=problem_responses(422))
def list_models(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, limit: PageLimit = 20, cursor: Cursor = None
) -> ModelPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = fetch_page(session, ModelRecord, principal, min(limit, settings.jobs_page_limit), cursor)
    return ModelPage(items=[model_out(record) for record in rows], next_cursor=next_cursor)


def _owned_model(session: Session, model_id: str, principal: Principal) -> ModelRecord:
    record = get_owned(session, ModelRecord, model_id, principal)
    if record is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "model_not_found", f"model {model_id!r} not found")
    return record


@router.get("/{model_id}", response_model=ModelOut, operation_id="get_model", responses=problem_responses(404, 422))
def get_model(model_id: ModelIdPath, session: SessionDep, principal: PrincipalDep) -> ModelOut:
    return model_out(_owned_model(session, model_id, principal))


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_model",
    responses=problem_responses(404, 409, 422, 503),
)
def delete_model(model_id: ModelIdPath, session: SessionDep, store: StoreDep, principal: PrincipalDep) -> Response:
    """Delete the model and its stored file; 409 (naming the job) while a queued or running job uses it. Finished
    jobs keep their results and name it still."""
    delete_unused_upload(session, store, principal, _owned_model(session, model_id, principal))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
