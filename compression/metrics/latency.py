"""Latency of several models measured interleaved, so machine noise hits them alike.

`compare_latency` is the one measurement every comparison uses (the pipeline's final metrics, the quantize
speed guard, `auto`, the prune speed check). Each *round* runs every model once on the same feed, in an
order rotated by one each round, so slow drift in machine load and cache effects of the order fall on every
model alike. For each candidate (every model after the first, the baseline) the per-round ratio
candidate / baseline is recorded; the estimate is the median of those ratios and its interval the
distribution-free confidence interval of a median (order statistics of the sorted ratios, exact binomial
coverage), which a few rounds spoiled by another process cannot drag the way they drag a mean.

After `min_rounds` rounds and `min_seconds` of timing, rounds go on until every candidate's interval is narrow
enough (`target_half_width`, relative) or decided (it lies entirely on one side of every threshold the caller
decides at), checked every few rounds; they stop at a cap whatever the load:
`runs` rounds or `max_seconds` of wall time (session creation and warm-up included), whichever comes first.
A result that stopped at a cap before its intervals were narrow or decided says so: `conclusive: false`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field

from compression.metrics.inference import make_session
from compression.settings import LatencySettings

CHECK_EVERY = 5  # rounds between interval checks once `min_rounds` are done
CANCEL_CHECK_SECONDS = 1.0  # the caller's cancellation check runs at most this often (it may query a store)
MIN_ROUNDS_FOR_VERDICT = 3  # fewer rounds give an interval that decides nothing
EXACT_COVERAGE_UP_TO = 2000  # rounds up to which the interval's coverage is computed exactly


class LatencyStats(BaseModel):
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    batch_size: int
    samples_ms: list[float] | None = Field(None, description="every timed run in run order (0.1 µs resolution)")


class StopReason(StrEnum):
    CONVERGED = "converged"  # every interval narrow enough or decided
    MAX_ROUNDS = "max_rounds"
    MAX_TIME = "max_time"
    NOTHING_TO_COMPARE = "nothing_to_compare"  # the baseline alone: timed for its own figures
    SAME_MODEL = "same_model"  # every candidate is the baseline's file content: ratio exactly 1


class RatioInterval(BaseModel):
    """Candidate / baseline latency: the median per-round ratio and its confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float = Field(description="coverage of [low, high] actually achieved with the rounds taken")
    rounds: int
    conclusive: bool = Field(description="the interval is narrow enough, or lies on one side of every threshold")

    @property
    def decisive(self) -> bool:
        return self.rounds >= MIN_ROUNDS_FOR_VERDICT

    def clearly_above(self, threshold: float) -> bool:
        return self.decisive and self.low > threshold

    def clearly_below(self, threshold: float) -> bool:
        return self.decisive and self.high < threshold

    def text(self) -> str:
        note = "" if self.conclusive else ", inconclusive"
        return f"{self.ratio:.3f}x [{self.low:.3f}, {self.high:.3f}]{note}"


class LatencyComparison(BaseModel):
    """Per-model stats (baseline first, in the order asked) and one ratio interval per candidate."""

    models: list[LatencyStats]
    ratios: list[RatioInterval]
    rounds: int
    wall_time_s: float
    stopped: StopReason
    reused: bool = Field(False, description="taken from an earlier measurement of the same files, feed and settings")

    @property
    def conclusive(self) -> bool:
        return all(r.conclusive for r in self.ratios)

    def summary(self) -> dict[str, object]:
        """The measurement itself, for metrics (the per-candidate figures go next to each candidate)."""
        return {
            "rounds": self.rounds,
            "wall_time_s": round(self.wall_time_s, 3),
            "stopped": self.stopped.value,
            "conclusive": self.conclusive,
            "reused": self.reused,
        }


def median_interval(ratios: Sequence[float], confidence: float) -> tuple[float, float, float, float]:
    """(median, low, high, achieved coverage) of the median of `ratios`, distribution-free.

    [x_(k), x_(n-k+1)] of the sorted values covers the median with probability 1 - 2 P(Bin(n, 1/2) < k);
    the largest k reaching `confidence` is used. When even [min, max] falls short (few rounds), that is the
    interval and its lower coverage is returned.
    """
    values = np.sort(np.asarray(ratios, dtype=np.float64))
    n = len(values)
    if n == 0:
        return 1.0, 0.0, math.inf, 0.0
    k, coverage = _order_statistic(n, confidence)
    return float(np.median(values)), float(values[k - 1]), float(values[n - k]), coverage


def _order_statistic(n: int, confidence: float) -> tuple[int, float]:
    """The largest k whose interval [x_(k), x_(n-k+1)] covers the median with `confidence`, and its coverage."""
    if n > EXACT_COVERAGE_UP_TO:  # normal approximation of Bin(n, 1/2); exact sums of huge integers are slow
        z = math.sqrt(2.0) * _erfinv(confidence)
        k = max(1, math.floor((n - z * math.sqrt(n)) / 2.0))
        return k, math.erf((n - 2.0 * k + 1.0) / math.sqrt(2.0 * n))
    total = 1 << n
    tail, term = 0, 1  # sum of C(n, j) for j < k, and C(n, k - 1)
    best_k, best = 1, 1.0 - 2.0 * (1 / total)
    for k in range(1, (n + 1) // 2 + 1):
        tail += term
        coverage = 1.0 - 2.0 * (tail / total)
        if k == 1:
            best = coverage
        elif coverage < confidence:
            break
        else:
            best_k, best = k, coverage
        term = term * (n - k + 1) // k
    return best_k, max(best, 0.0)


def _erfinv(y: float) -> float:
    """Inverse error function by bisection (only needed for the normal approximation)."""
    low, high = 0.0, 10.0
    for _ in range(100):
        middle = (low + high) / 2.0
        if math.erf(middle) < y:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def _interval(ratios: list[float], settings: LatencySettings, decide_at: Sequence[float]) -> RatioInterval:
    ratio, low, high, coverage = median_interval(ratios, settings.confidence)
    n = len(ratios)
    enough = coverage >= settings.confidence and n >= MIN_ROUNDS_FOR_VERDICT
    narrow = enough and low > 0 and math.log(high / low) / 2 <= math.log1p(settings.target_half_width)
    decided = enough and bool(decide_at) and all(low > t or high < t for t in decide_at)
    return RatioInterval(ratio=ratio, low=low, high=high, confidence=coverage, rounds=n, conclusive=narrow or decided)


def _stats(timings: list[float], threads: int, batch_size: int) -> LatencyStats:
    return LatencyStats(
        median_ms=float(np.median(timings)),
        p90_ms=float(np.percentile(timings, 90)),
        mean_ms=float(np.mean(timings)),
        runs=len(timings),
        threads=threads,
        batch_size=batch_size,
        samples_ms=[round(value, 4) for value in timings],
    )


class _Clock:
    def __init__(self, max_seconds: float, check: Callable[[], None] | None) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + max_seconds
        self.check = check
        self.last_check = -math.inf

    def expired(self) -> bool:
        return time.perf_counter() >= self.deadline

    def maybe_check(self) -> None:
        now = time.perf_counter()
        if self.check is not None and now - self.last_check >= CANCEL_CHECK_SECONDS:
            self.last_check = now
            self.check()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _timed_run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - start) * 1000.0


def compare_latency(
    paths: Sequence[Path],
    feed: dict[str, np.ndarray],
    settings: LatencySettings,
    batch_size: int,
    check: Callable[[], None] | None = None,
    decide_at: Sequence[float] = (),
) -> LatencyComparison:
    """Adaptive interleaved comparison of `paths[1:]` against `paths[0]` (see the module docstring).

    `decide_at`: ratio thresholds the caller decides at (e.g. the slowdown tolerance); an interval lying
    entirely on one side of all of them needs no more rounds. `check` (cancellation) runs about once a second.
    """
    clock = _Clock(settings.max_seconds, check)
    clock.maybe_check()
    sessions = [make_session(path, settings.threads) for path in paths]
    for _ in range(settings.warmup):
        for session in sessions:
            if clock.expired():
                break
            session.run(None, feed)
    timings: list[list[float]] = [[] for _ in sessions]
    ratios: list[list[float]] = [[] for _ in sessions[1:]]
    max_rounds = settings.runs
    min_rounds = min(settings.min_rounds, max_rounds)
    stopped = StopReason.MAX_ROUNDS
    intervals: list[RatioInterval] = []
    timing_started = clock.elapsed
    checked_at: int | None = None
    for round_index in range(max_rounds):
        clock.maybe_check()
        order = [(round_index + offset) % len(sessions) for offset in range(len(sessions))]
        this_round = [0.0] * len(sessions)
        for index in order:
            this_round[index] = _timed_run(sessions[index], feed)
        for index, value in enumerate(this_round):
            timings[index].append(value)
        for index, value in enumerate(this_round[1:]):
            ratios[index].append(value / this_round[0] if this_round[0] > 0 else math.inf)
        done = round_index + 1
        if clock.expired():
            stopped = StopReason.MAX_TIME
            break
        warm = done >= min_rounds and clock.elapsed - timing_started >= settings.min_seconds
        if warm and len(sessions) > 1 and (checked_at is None or done - checked_at >= CHECK_EVERY):
            checked_at = done
            intervals = [_interval(r, settings, decide_at) for r in ratios]
            if all(i.conclusive for i in intervals):
                stopped = StopReason.CONVERGED
                break
        if warm and len(sessions) == 1:
            stopped = StopReason.NOTHING_TO_COMPARE
            break
    intervals = [_interval(r, settings, decide_at) for r in ratios]
    if stopped == StopReason.MAX_ROUNDS and intervals and all(i.conclusive for i in intervals):
        stopped = StopReason.CONVERGED
    return LatencyComparison(
        models=[_stats(t, settings.threads, batch_size) for t in timings],
        ratios=intervals,
        rounds=len(timings[0]),
        wall_time_s=clock.elapsed,
        stopped=stopped,
    )


def measure_latency(
    paths: list[Path],
    feed: dict[str, np.ndarray],
    runs: int,
    warmup: int,
    threads: int,
    batch_size: int,
    check: Callable[[], None] | None = None,
) -> list[LatencyStats]:
    """Exactly `runs` interleaved rounds, no time cap (benches that want a fixed amount of work)."""
    rounds = max(runs, 1)
    settings = LatencySettings.model_construct(
        runs=rounds, min_rounds=rounds, warmup=warmup, threads=threads, max_seconds=math.inf
    )
    return compare_latency(paths, feed, settings, batch_size, check).models
