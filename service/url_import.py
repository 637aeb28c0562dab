"""Fetch a model or dataset from where it lives (`s3://bucket/key`, `https://...`) into a local temp file.

The bytes are streamed to disk in chunks (never held whole), hashed on the way, and refused as soon as they pass
the size limit (or up front when the source declares a larger size). HTTP(S) goes through the SSRF guard of
`service/outbound.py`: the scheme (https; http with `OUTBOUND_ALLOW_HTTP`) and every address connected to are
checked, redirects are followed by hand (at most `URL_IMPORT_MAX_REDIRECTS`), each target checked again. S3 uses
the server's own credentials (the AWS_* variables) and `S3_ENDPOINT_URL`; because they may also read the
artifact store, keys under the store's own `S3_BUCKET`/`S3_PREFIX` are refused. The whole import is bounded by
`URL_IMPORT_MAX_SECONDS`. Every failure is a `UrlImportError` whose `reason` says which kind and whose message
says what to change; the API maps reasons to statuses.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import anyio
import httpx

from service.outbound import OutboundURLRefusedError, async_guarded_client, split_url
from service.settings import Settings

CHUNK_BYTES = 1 << 20
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ImportFailure(StrEnum):
    """Why an import failed (one per closed kind; the API turns each into a status and a code)."""

    BAD_URL = "bad_url"  # not a URL this service can import (scheme, shape)
    REFUSED = "refused"  # the outbound rules forbid the target (SSRF guard, the artifact bucket)
    UNREACHABLE = "unreachable"  # DNS, connection, TLS or transport failure
    NOT_FOUND = "not_found"  # the source answered 404 / NoSuchKey / NoSuchBucket
    FORBIDDEN = "forbidden"  # the source answered 401/403 / AccessDenied
    UPSTREAM = "upstream"  # any other non-success answer, too many redirects
    TOO_LARGE = "too_large"  # over the size limit (declared or streamed)
    TIMEOUT = "timeout"  # URL_IMPORT_MAX_SECONDS or a read timeout passed
    EMPTY = "empty"  # zero bytes
    UNAVAILABLE = "unavailable"  # this server cannot import from such URLs (boto3 missing)


class UrlImportError(Exception):
    def __init__(self, reason: ImportFailure, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class FetchedFile:
    path: Path
    filename: str  # the URL's last path segment, unquoted (the caller cleans it)
    size_bytes: int
    sha256: str


class _Sink:
    """A temp file in `directory` that counts, hashes and refuses bytes past `limit`."""

    def __init__(self, directory: Path, limit: int, describe_limit: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.handle: BinaryIO = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.limit, self.describe_limit = limit, describe_limit
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise UrlImportError(ImportFailure.TOO_LARGE, f"the source is larger than {self.describe_limit}")
        self.handle.write(chunk)
        self.digest.update(chunk)

    def finish(self, filename: str) -> FetchedFile:
        self.handle.close()
        if self.size == 0:
            self.discard()
            raise UrlImportError(ImportFailure.EMPTY, "the source is empty (0 bytes)")
        return FetchedFile(self.path, filename, self.size, self.digest.hexdigest())

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


def url_filename(url: str, default: str) -> str:
    """The last segment of the URL's path, unquoted, or `default` when it has none."""
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return segment or default


def _check_declared(size: int | None, limit: int, describe_limit: str) -> None:
    if size is not None and size > limit:
        raise UrlImportError(ImportFailure.TOO_LARGE, f"the source declares {size} bytes, over {describe_limit}")


async def fetch_url(
    url: str, directory: Path, limit: int, describe_limit: str, settings: Settings, default_name: str
) -> FetchedFile:
    """Stream `url` into a temp file under `directory`; raise `UrlImportError` (no temp file left) on failure.
    `describe_limit` names the limit in messages ("the limit of N bytes (setting MAX_MODEL_BYTES)")."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in {"s3", "https", "http"}:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise UrlImportError(
            ImportFailure.BAD_URL, f"{url[:200]!r} has {shown}; give an s3://bucket/key or https:// URL"
        )
    sink = _Sink(directory, limit, describe_limit)
    try:
        with anyio.fail_after(settings.url_import_max_seconds):
            if scheme == "s3":
                await anyio.to_thread.run_sync(_fetch_s3, url, sink, settings, abandon_on_cancel=True)
            else:
                await _fetch_http(url, sink, settings)
    except TimeoutError:
        sink.discard()
        raise UrlImportError(
            ImportFailure.TIMEOUT,
            f"the import took longer than {settings.url_import_max_seconds:g} s (setting URL_IMPORT_MAX_SECONDS); "
            "use a faster source or upload the file",
        ) from None
    except BaseException:
        sink.discard()
        raise
    return sink.finish(url_filename(url, default_name))


# --- HTTP(S) ---------------------------------------------------------------------------------------------------


async def _fetch_http(url: str, sink: _Sink, settings: Settings) -> None:
    if urlsplit(url).scheme.lower() == "http" and not settings.outbound_allow_http:
        raise UrlImportError(
            ImportFailure.BAD_URL,
            "plain http:// URLs are not fetched; use https:// (or the operator sets OUTBOUND_ALLOW_HTTP=true)",
        )
    try:
        split_url(url, settings)
    except OutboundURLRefusedError as exc:
        raise UrlImportError(ImportFailure.BAD_URL, str(exc)) from exc
    client = async_guarded_client(settings, settings.url_import_timeout_seconds)
    async with client, _follow(client, url, settings) as response:
        declared = response.headers.get("content-length")
        _check_declared(int(declared) if declared and declared.isdigit() else None, sink.limit, sink.describe_limit)
        try:
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                sink.write(chunk)
        except httpx.TimeoutException as exc:
            raise _timeout(settings) from exc
        except httpx.TransportError as exc:
            raise UrlImportError(
                ImportFailure.UNREACHABLE, f"the download from {_host(url)} broke off: {_first_line(exc)}"
            ) from exc


class _follow:
    """Async context manager: the streamed final response after following redirects by hand."""

    def __init__(self, client: httpx.AsyncClient, url: str, settings: Settings) -> None:
        self.client, self.url, self.settings = client, url, settings
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        url = self.url
        for _ in range(self.settings.url_import_max_redirects + 1):
            response = await self._send(url)
            if response.status_code not in REDIRECTS:
                self.response = response
                _check_status(response, url)
                return response
            location = response.headers.get("location")
            await response.aclose()
            if not location:
                raise UrlImportError(ImportFailure.UPSTREAM, f"{_host(url)} answered a redirect without a Location")
            url = urljoin(url, location)
        raise UrlImportError(
            ImportFailure.UPSTREAM,
            f"more than {self.settings.url_import_max_redirects} redirects (setting URL_IMPORT_MAX_REDIRECTS); "
            "give the file's final URL",
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            await self.response.aclose()

    async def _send(self, url: str) -> httpx.Response:
        try:
            request = self.client.build_request("GET", url)
            return await self.client.send(request, stream=True)
        except OutboundURLRefusedError as exc:  # a private address, or a redirect to a refused URL
            raise UrlImportError(ImportFailure.REFUSED, str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise _timeout(self.settings) from exc
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise UrlImportError(
                ImportFailure.UNREACHABLE,
                f"could not reach {_host(url)}: {_first_line(exc)}; check the URL and that the host is up",
            ) from exc


def _check_status(response: httpx.Response, url: str) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    where = f"{_host(url)} answered {code} {response.reason_phrase}".rstrip()
    if code in (404, 410):
        raise UrlImportError(ImportFailure.NOT_FOUND, f"{where}: check the URL")
    if code in (401, 403):
        raise UrlImportError(
            ImportFailure.FORBIDDEN, f"{where}: the file must be readable without credentials (e.g. a presigned URL)"
        )
    raise UrlImportError(ImportFailure.UPSTREAM, f"{where}; try again later or upload the file")


def _timeout(settings: Settings) -> UrlImportError:
    return UrlImportError(
        ImportFailure.TIMEOUT,
        f"the source did not answer within {settings.url_import_timeout_seconds:g} s "
        "(setting URL_IMPORT_TIMEOUT_SECONDS)",
    )


def _host(url: str) -> str:
    return urlsplit(url).netloc or url[:100]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# --- S3 --------------------------------------------------------------------------------------------------------


def parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or parts.query or parts.fragment:
        raise UrlImportError(ImportFailure.BAD_URL, f"{url[:200]!r} is not s3://bucket/key")
    return bucket, key


def _check_not_artifact_store(bucket: str, key: str, settings: Settings) -> None:
    """The server's credentials read its own artifacts too: a tenant must not import another's files."""
    if settings.artifact_store != "s3" or bucket != settings.s3_bucket:
        return
    prefix = settings.s3_prefix.strip("/")
    if not prefix or key == prefix or key.startswith(prefix + "/"):
        raise UrlImportError(
            ImportFailure.REFUSED,
            f"s3://{bucket}/{key} is inside this service's artifact store; import from another bucket or prefix",
        )


def _fetch_s3(url: str, sink: _Sink, settings: Settings) -> None:
    bucket, key = parse_s3_url(url)
    _check_not_artifact_store(bucket, key, settings)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ModuleNotFoundError as exc:
        raise UrlImportError(
            ImportFailure.UNAVAILABLE, "this server cannot import from S3 (boto3 is not installed: the s3 extra)"
        ) from exc
    timeout = settings.url_import_timeout_seconds
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2})
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        _check_declared(int(head.get("ContentLength", 0)), sink.limit, sink.describe_limit)
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                sink.write(chunk)
        finally:
            body.close()
    except ClientError as exc:
        raise _s3_error(url, exc) from exc
    except BotoCoreError as exc:  # endpoint unreachable, no credentials, read timeout
        raise UrlImportError(ImportFailure.UNREACHABLE, f"could not read {url}: {_first_line(exc)}") from exc


def _s3_error(url: str, exc: Exception) -> UrlImportError:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"} or status == 404:
        return UrlImportError(ImportFailure.NOT_FOUND, f"{url} does not exist ({code or status}): check the URL")
    if code in {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or status == 403:
        return UrlImportError(
            ImportFailure.FORBIDDEN,
            f"this server's S3 credentials may not read {url} ({code or status}): grant them s3:GetObject on it",
        )
    return UrlImportError(ImportFailure.UPSTREAM, f"S3 refused {url}: {code or status}: {_first_line(exc)}")
