"""`POST /v1/models` and `POST /v1/datasets` with a JSON body `{"url": ...}`: the file fetched from where it lives.

The fetching is `service/url_import.py` (S3 with the server's credentials, HTTP(S) through the SSRF guard,
streamed to disk within the same size limit as an upload). Here: the JSON body read within MAX_JSON_BODY_BYTES
and validated, and every failure turned into a problem answer that says what to fix.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import ApiError
from app.uploads import ReceivedFile, clean_filename, limit_setting
from service.settings import Settings, get_settings
from service.url_import import ImportFailure, UrlImportError, fetch_url

MAX_URL_CHARS = 4096


class UrlImport(BaseModel):
    """Import the file from a URL instead of uploading it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "s3://models/digits_cnn.onnx"}, {"url": "https://example.com/models/digits_cnn.onnx"}]
        },
    )

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="`s3://bucket/key` (read with the server's S3 credentials and S3_ENDPOINT_URL) or an `https://` "
        "URL the server may reach (public addresses, or hosts in OUTBOUND_ALLOWLIST; http:// only with "
        "OUTBOUND_ALLOW_HTTP); redirects are followed",
    )


# every failure is the request's to fix: 413 past the size limit, 422 otherwise
STATUSES = {ImportFailure.TOO_LARGE: status.HTTP_413_CONTENT_TOO_LARGE}
CODES = {
    ImportFailure.BAD_URL: "url_not_supported",
    ImportFailure.REFUSED: "url_refused",
    ImportFailure.UNREACHABLE: "url_unreachable",
    ImportFailure.NOT_FOUND: "url_not_found",
    ImportFailure.FORBIDDEN: "url_forbidden",
    ImportFailure.UPSTREAM: "url_upstream_error",
    ImportFailure.TOO_LARGE: "upload_too_large",
    ImportFailure.TIMEOUT: "url_timeout",
    ImportFailure.UNAVAILABLE: "url_import_unavailable",
}


def request_settings(request: Request) -> Settings:
    return getattr(request.app.state, "settings", None) or get_settings()


async def read_url_import(request: Request, limit: int) -> UrlImport:
    """The JSON body, at most `limit` bytes, as a `UrlImport` (422 with the invalid fields otherwise)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(
                status.HTTP_413_CONTENT_TOO_LARGE,
                "body_too_large",
                f"request body is larger than the limit of {limit} bytes (setting MAX_JSON_BODY_BYTES)",
            )
    try:
        return UrlImport.model_validate_json(bytes(body))
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_input=False)]
        raise RequestValidationError(errors) from exc


async def receive_from_url(request: Request, directory: Path, limit: int, what: str) -> ReceivedFile:
    """Fetch the file a JSON body names into `directory`; the same limit (and setting) as an upload."""
    settings = request_settings(request)
    body = await read_url_import(request, settings.max_json_body_bytes)
    describe = f"the limit of {limit} bytes (setting {limit_setting(what)})"
    default_name = "model.onnx" if what == "model" else "dataset.npz"
    try:
        fetched = await fetch_url(body.url, directory, limit, describe, settings, default_name)
    except UrlImportError as exc:
        code = f"empty_{what}" if exc.reason == ImportFailure.EMPTY else CODES[exc.reason]
        status_code = STATUSES.get(exc.reason, status.HTTP_422_UNPROCESSABLE_CONTENT)
        raise ApiError(status_code, code, f"could not import the {what} from the URL: {exc.message}") from exc
    return ReceivedFile(
        path=fetched.path,
        filename=clean_filename(fetched.filename),
        size_bytes=fetched.size_bytes,
        sha256=fetched.sha256,
    )
