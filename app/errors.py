"""One error shape for every non-2xx answer: RFC 9457 `application/problem+json`.

Every error the API returns is a `Problem`: `type` (a URN naming the problem), `title` (the HTTP reason),
`status`, `detail` (always a string saying what to fix), `code` (a stable machine code) and, for validation
failures, `errors` (one entry per invalid field). Routes raise `ApiError`; FastAPI's own errors (404 for an
unknown path, 405, request validation) and anything unexpected are rendered the same way by the handlers here.
Messages never carry the server's absolute paths (`scrub_paths`).
"""

from __future__ import annotations

import logging
import math
import re
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:onnx-compress:problem:"

log = logging.getLogger(__name__)

# the code a plain HTTPException of each status gets (routes raise ApiError with a more specific one)
DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "content_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class FieldError(BaseModel):
    """One invalid part of the request."""

    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the field path")
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="pydantic's error type (stable): 'missing', 'greater_than', ...")


class Problem(BaseModel):
    """RFC 9457 problem details; `code` is stable and meant for programs, `detail` for people."""

    type: str = Field(description="URN naming the problem; its last part is `code`")
    title: str = Field(description="the HTTP reason phrase")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong and what to change")
    code: str = Field(description="stable machine-readable code, e.g. 'job_not_found', 'validation_error'")
    instance: str | None = Field(None, description="the request path")
    errors: list[FieldError] = Field(default_factory=list, description="the invalid fields (validation errors)")

    model_config = {
        "json_schema_extra": {
            "example": {
                "type": f"{TYPE_PREFIX}job_not_found",
                "title": "Not Found",
                "status": 404,
                "detail": "job '0c5f...' not found",
                "code": "job_not_found",
                "instance": "/v1/jobs/0c5f...",
                "errors": [],
            }
        }
    }


class ApiError(StarletteHTTPException):
    """An error a route raises on purpose: a status, a stable code and a message saying what to fix."""

    def __init__(self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or wrong API key (only when API_KEYS is set)",
    404: "No such resource",
    409: "Conflict with the resource's current state",
    413: "Request body over the size limit",
    422: "Invalid request: `errors` lists the fields, `detail` says what to fix",
    503: "A backing service (broker, database) is not answering; retry after `Retry-After` seconds",
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each listed status documented as a Problem (JSON and problem+json)."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        code: {
            "model": Problem,
            "description": _DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
        for code in codes
    }


# paths of the server's own folders, replaced in messages (set by install_error_handlers)
_ROOTS: list[str] = []
_UPLOAD_TEMP = re.compile(r"(?:[\w./\-]*/)?\.upload-[\w\-]+")
_ABSOLUTE = re.compile(r"(?<![\w.])/(?:tmp|home|work|root|var|usr|opt|srv|data|app|mnt|private)/[^\s'\"),;]*")


def scrub_paths(message: str) -> str:
    """Drop the server's absolute paths from a message: data-dir paths become relative, temp uploads
    'the uploaded file', and any other absolute path '<path>'."""
    for root in _ROOTS:
        message = message.replace(root + "/", "").replace(root, "<data>")
    message = _UPLOAD_TEMP.sub("the uploaded file", message)
    return _ABSOLUTE.sub("<path>", message)


def _jsonable(value: Any) -> Any:
    """Error locations hold strings and ints only; anything else (a NaN key) is rendered as a string."""
    if isinstance(value, int | str) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def problem_response(
    request: Request,
    status_code: int,
    code: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """A Problem answer; `extensions` are extra members (RFC 9457 section 3.2), e.g. readiness `checks`."""
    title = HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "Error"
    problem = Problem(
        type=f"{TYPE_PREFIX}{code}",
        title=title,
        status=status_code,
        detail=scrub_paths(detail),
        code=code,
        instance=request.url.path,
        errors=errors or [],
    )
    return JSONResponse(
        {**(extensions or {}), **problem.model_dump(mode="json")},
        status_code=status_code,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    """The invalid fields without their input values (an input may be NaN, huge or a secret)."""
    return [
        FieldError(
            loc=[_jsonable(part) for part in error.get("loc", ())],
            msg=scrub_paths(str(error.get("msg", ""))),
            type=str(error.get("type", "")),
        )
        for error in exc.errors()
    ]


def _summary(errors: list[FieldError]) -> str:
    parts = [f"{'.'.join(str(p) for p in error.loc)}: {error.msg}" for error in errors[:10]]
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "invalid request: " + "; ".join(parts) + more if parts else "invalid request"


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _field_errors(exc)
    return problem_response(request, 422, "validation_error", _summary(errors), errors)


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = getattr(exc, "code", None) or DEFAULT_CODES.get(exc.status_code, f"http_{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(request, exc.status_code, code, detail, headers=exc.headers)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(request, 500, "internal_error", "internal error; the server log has the details")


def install_error_handlers(app: FastAPI, roots: list[Path]) -> None:
    """Render every error as a Problem; `roots` (data dir, artifacts, ...) are scrubbed from messages."""
    for root in roots:
        text = str(root.resolve())
        if text not in _ROOTS and text != "/":
            _ROOTS.append(text)
    _ROOTS.sort(key=len, reverse=True)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
