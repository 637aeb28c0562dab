"""Rendered `GET /v1/jobs/{id}` bodies, reused while the job has not changed.

Status reads are what every waiting client repeats, and most of them find the job as it was: rendering it again
means decoding its JSON columns (steps, metrics), validating them into the typed response and serializing it.
A rendering is kept per (job, public base URL: the `urls` are absolute) with the job's change markers
(`service.job_reads.read_version`); a read whose markers match answers with it. Bounded in bytes
(`JOB_READ_CACHE_MB`, 0 turns it off), least recently used first out; per process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, NamedTuple


class Rendered(NamedTuple):
    version: tuple[Any, ...]
    terminal: bool
    body: bytes


class RenderedJobs:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], Rendered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], version: tuple[Any, ...]) -> Rendered | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.version != version:
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, str], entry: Rendered) -> None:
        if len(entry.body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[key] = entry
            self._bytes += len(entry.body)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)

    def discard(self, job_id: str) -> None:
        with self._lock:
            for key in [key for key in self._entries if key[0] == job_id]:
                self._bytes -= len(self._entries.pop(key).body)


def for_app(app: Any, settings: Any) -> RenderedJobs | None:
    """The app's cache (made on first use), or None when JOB_READ_CACHE_MB is 0."""
    if settings.job_read_cache_mb <= 0:
        return None
    rendered = getattr(app.state, "rendered_jobs", None)
    if rendered is None:
        rendered = app.state.rendered_jobs = RenderedJobs(settings.job_read_cache_mb * 1024 * 1024)
    return rendered
