"""Multipart uploads streamed straight to disk: never held whole in memory, refused past the size limit.

The event loop receives and parses; the file's bytes are hashed (sha256) and written by a thread of the upload's
own (hashlib and file writes release the GIL), so both overlap with receiving; at most WRITE_QUEUE_CHUNKS
received chunks wait for it (a few MiB).
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from fastapi import Request, status
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from app.errors import ApiError
from compression.errors import CompressionError

T = TypeVar("T")

MAX_FILENAME_CHARS = 255  # what a filename column and most filesystems hold
WRITE_QUEUE_CHUNKS = 32  # received chunks (each at most the server's read size, 64-256 KiB) waiting to be written


class UploadTooLarge(Exception):
    pass


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size_bytes: int
    sha256: str


class _Writer:
    """Hashes and writes a file's chunks in order on a thread of its own."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        self.dropped = False
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=WRITE_QUEUE_CHUNKS)
        self.thread = threading.Thread(target=self._run, name="upload-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is None and not self.dropped:
                try:
                    self.handle.write(chunk)
                    self.digest.update(chunk)
                except BaseException as exc:  # disk full, ...: raised by close()
                    self.error = exc

    def put(self, chunk: bytes) -> None:
        self.chunks.put(chunk)  # waits only while WRITE_QUEUE_CHUNKS chunks are queued

    def close(self, drop: bool = False) -> None:
        """Write what is queued (or, with `drop`, skip it), stop the thread, close the file; blocks meanwhile."""
        self.dropped = self.dropped or drop
        self.chunks.put(None)
        self.thread.join()
        self.handle.close()
        if self.error is not None and not self.dropped:
            raise self.error


class _FilePart:
    """Collects one multipart part's headers and writes the wanted field's bytes to a temp file."""

    def __init__(self, field: str, directory: Path, limit: int) -> None:
        self.field, self.directory, self.limit = field, directory, limit
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.writer: _Writer | None = None
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.found = False
        self.ended = False

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        if params.get(b"name", b"").decode() == self.field and not self.found:
            self.found = True
            self.filename = clean_filename(params.get(b"filename", b"upload").decode(errors="replace"))
            fd, name = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
            self.writer, self.path = _Writer(os.fdopen(fd, "wb")), Path(name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.writer is None or self.ended:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadTooLarge
        self.writer.put(chunk)

    def on_part_end(self) -> None:
        if self.writer is not None:
            self.ended = True  # the wanted part is complete; finish() writes what is queued

    def finish(self) -> str:
        """Wait until every byte is on disk (blocking: run it in a thread); the file's sha256."""
        assert self.writer is not None
        self.writer.close()
        return self.writer.digest.hexdigest()

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close(drop=True)
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def clean_filename(name: str, limit: int = MAX_FILENAME_CHARS) -> str:
    """The client's file name as stored: its last path part, without control characters (NUL included),
    cut to `limit` characters keeping the extension."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "upload"
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and 0 < len(ext) <= 16:
        return stem[: limit - len(ext) - 1] + "." + ext
    return name[:limit]


def limit_setting(what: str) -> str:
    """The setting that bounds an upload of `what` ('model' or 'dataset')."""
    return "MAX_MODEL_BYTES" if what == "model" else "MAX_DATASET_BYTES"


def _too_large(limit: int, what: str) -> ApiError:
    setting = limit_setting(what)
    return ApiError(
        status.HTTP_413_CONTENT_TOO_LARGE,
        "upload_too_large",
        f"{what} is larger than the limit of {limit} bytes (setting {setting})",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


async def receive_checked(
    request: Request, directory: Path, limit: int, what: str, check: Callable[[Path], T]
) -> tuple[ReceivedFile, T]:
    """Receive the multipart field `file` and run `check` on it; a file that fails is deleted and explained
    (422 with the engine's code, or the ApiError `check` raised); whatever happens, no temp file is left."""
    received = await receive_upload(request, directory, limit, what)
    try:
        return received, await run_in_threadpool(check, received.path)
    except ApiError:
        received.path.unlink(missing_ok=True)
        raise
    except CompressionError as exc:
        received.path.unlink(missing_ok=True)
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.code, exc.message) from exc
    except Exception as exc:  # a reader's own error on a malformed file: still the upload's fault
        received.path.unlink(missing_ok=True)
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"invalid_{what}",
            f"could not read the uploaded {what}: {type(exc).__name__}: {_first_line(exc)}",
        ) from exc
    except BaseException:  # canceled (client gone, shutdown)
        received.path.unlink(missing_ok=True)
        raise


async def receive_upload(request: Request, directory: Path, limit: int, what: str) -> ReceivedFile:
    """A multipart upload (field `file`) or, with a JSON body `{"url": ...}`, the file fetched from that URL
    (app/url_import.py): either way streamed into `directory` within `limit`."""
    content_type, _ = parse_options_header(request.headers.get("content-type"))
    if content_type == b"application/json":
        from app.url_import import receive_from_url  # imports this module

        return await receive_from_url(request, directory, limit, what)
    return await receive_file(request, "file", directory, limit, what)


async def receive_file(request: Request, field: str, directory: Path, limit: int, what: str) -> ReceivedFile:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "not_multipart",
            f"send the {what} as multipart/form-data with the file in the field '{field}', "
            'or as JSON {"url": "s3://bucket/key" or "https://..."} to import it from where it lives',
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        raise _too_large(limit, what)
    directory.mkdir(parents=True, exist_ok=True)
    part = _FilePart(field, directory, limit)
    callbacks = {name: getattr(part, name) for name in dir(part) if name.startswith("on_")}
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except UploadTooLarge:
        part.discard()
        raise _too_large(limit, what) from None
    except Exception as exc:
        part.discard()
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "malformed_multipart",
            f"malformed multipart body: {_first_line(exc)}",
        ) from exc
    except BaseException:  # the client went away mid-upload, or the server is stopping
        part.discard()
        raise
    if not part.found or part.path is None:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "missing_file_field", f"no file in the multipart field '{field}'"
        )
    if part.size == 0:
        part.discard()
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, f"empty_{what}", f"the uploaded {what} file is empty")
    try:
        sha256 = await run_in_threadpool(part.finish)
    except OSError as exc:  # the disk is full or failing
        part.discard()
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "storage_unavailable",
            f"the server could not store the uploaded {what} ({type(exc).__name__}: {_first_line(exc)}); try later",
        ) from exc
    except BaseException:  # the request was canceled while the last bytes were written
        part.discard()
        raise
    return ReceivedFile(path=part.path, filename=part.filename, size_bytes=part.size, sha256=sha256)
