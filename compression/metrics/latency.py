"""Latency of several models measured interleaved, so machine noise hits them alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from compression.metrics.inference import make_session


class LatencyStats(BaseModel):
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    batch_size: int
    samples_ms: list[float] | None = Field(None, description="every timed run in run order (0.1 µs resolution)")


def measure_latency(
    paths: list[Path],
    feed: dict[str, np.ndarray],
    runs: int,
    warmup: int,
    threads: int,
    batch_size: int,
    check: Callable[[], None] | None = None,
) -> list[LatencyStats]:
    """Round-robin one run of each model per round: drift in machine load is shared, not attributed.

    `check` (a cancellation check) is called every few rounds so long measurements stay cancelable.
    """
    sessions = [make_session(path, threads) for path in paths]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feed)
    timings: list[list[float]] = [[] for _ in sessions]
    for round_index in range(runs):
        if check is not None and round_index % 16 == 0:
            check()
        for index, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            timings[index].append((time.perf_counter() - start) * 1000.0)
    return [
        LatencyStats(
            median_ms=float(np.median(t)),
            p90_ms=float(np.percentile(t, 90)),
            mean_ms=float(np.mean(t)),
            runs=runs,
            threads=threads,
            batch_size=batch_size,
            samples_ms=[round(value, 4) for value in t],
        )
        for t in timings
    ]
