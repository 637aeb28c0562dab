"""Every onnxruntime run the engine makes is bounded in time and stops when the job is canceled.

A 279-byte model (a Loop with 2^62 iterations) would otherwise hold a worker until the job's soft time limit,
deaf to cancel. onnxruntime stops a run between kernels (inside Loop bodies too) when its `RunOptions.terminate`
is set from another thread: one watchdog thread per process does that for every guarded run, when the run
passes its time limit or when the caller's cancel check raises.

The caller sets the limits for a block of work (`with run_limits(seconds, check)`: the pipeline does it for a
whole job); `GuardedSession.run` (what `make_session` returns) registers each run with the watchdog.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from compression.errors import CompressionError

POLL_SECONDS = 0.2
CHECK_EVERY_SECONDS = 0.5


class RunTimeLimitError(CompressionError):
    code = "run_time_limit"


@dataclass(frozen=True)
class RunLimits:
    max_seconds: float | None = None
    check: Callable[[], None] | None = None


@dataclass
class _ActiveRun:
    options: ort.RunOptions
    limits: RunLimits
    deadline: float
    next_check: float
    stopped_by: BaseException | None = field(default=None)


_limits: contextvars.ContextVar[RunLimits | None] = contextvars.ContextVar("run_limits", default=None)


@contextmanager
def run_limits(max_seconds: float | None, check: Callable[[], None] | None = None) -> Iterator[None]:
    """Bound every guarded run inside the block: `max_seconds` per run, and stop it when `check` raises."""
    token = _limits.set(RunLimits(max_seconds, check))
    try:
        yield
    finally:
        _limits.reset(token)


class _Watchdog:
    def __init__(self) -> None:
        self._runs: dict[int, _ActiveRun] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(self, run: _ActiveRun) -> int:
        with self._lock:
            run_id = next(self._ids)
            self._runs[run_id] = run
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="onnxruntime-run-watchdog", daemon=True)
                self._thread.start()
        return run_id

    def unregister(self, run_id: int) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def _loop(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            now = time.monotonic()
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                if run.stopped_by is not None:
                    continue
                if now > run.deadline:
                    run.stopped_by = RunTimeLimitError(
                        f"one onnxruntime run of the model took longer than {run.limits.max_seconds:g} s "
                        "(EVAL_MAX_RUN_SECONDS): the model does too much work per sample (a huge Loop trip count, "
                        "giant inputs); raise the setting if this is expected"
                    )
                elif run.limits.check is not None and now >= run.next_check:
                    run.next_check = now + CHECK_EVERY_SECONDS
                    try:
                        run.limits.check()
                    except BaseException as exc:  # the job was canceled (or lost its lease): stop the run
                        run.stopped_by = exc
                if run.stopped_by is not None:
                    run.options.terminate = True


_WATCHDOG = _Watchdog()


class GuardedSession:
    """An InferenceSession whose `run` obeys the current `run_limits` (other attributes pass through)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, output_names: Any, input_feed: Any, run_options: ort.RunOptions | None = None) -> Any:
        limits = _limits.get()
        if limits is None or (limits.max_seconds is None and limits.check is None):
            return self._session.run(output_names, input_feed, run_options)
        options = run_options or ort.RunOptions()
        now = time.monotonic()
        deadline = now + limits.max_seconds if limits.max_seconds is not None else float("inf")
        run = _ActiveRun(options, limits, deadline, now + CHECK_EVERY_SECONDS)
        run_id = _WATCHDOG.register(run)
        try:
            return self._session.run(output_names, input_feed, options)
        except Exception:
            if run.stopped_by is not None:
                raise run.stopped_by from None
            raise
        finally:
            _WATCHDOG.unregister(run_id)
