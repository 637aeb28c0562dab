"""The structured prune step's speed check: is the pruned model slower than its input, and what to keep.

One adaptive interleaved measurement (compression/metrics/latency.py, the one quantization uses) gives
each candidate's latency ratio with a confidence interval. The pruned model is `clearly slower` only when
the whole interval lies above `latency_slowdown_tolerance`; only then are channel multiples tried.
A point ratio is never a verdict: on a loaded machine a model timed against itself reads 0.9-1.1x.

The whole check (both measurements and the retried prunes between them) shares one time budget,
`prune_speed_check_seconds`: each measurement's cap is what remains of it, and the retries are skipped
when too little remains for them (a model whose pruned, untrained decoder loops to its step limit makes
every run slow, and no channel multiple fixes that).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from compression.metrics.evaluation import Evaluator
from compression.metrics.latency import LatencyComparison, RatioInterval
from compression.settings import EngineSettings

MIN_MEASURE_SECONDS = 2.0  # a measurement given less than this decides nothing: not started


class PruneSpeed(StrEnum):
    FASTER = "clearly faster"  # the whole interval is below 1
    WITHIN_NOISE = "within noise"
    INCONCLUSIVE = "inconclusive"  # the measurement hit its cap before the interval was narrow or decided
    SLOWER = "clearly slower"  # the whole interval is above latency_slowdown_tolerance


def prune_speed(interval: RatioInterval, settings: EngineSettings) -> PruneSpeed:
    if interval.clearly_above(settings.latency.slowdown_tolerance):
        return PruneSpeed.SLOWER
    if interval.clearly_below(1.0):
        return PruneSpeed.FASTER
    return PruneSpeed.WITHIN_NOISE if interval.conclusive else PruneSpeed.INCONCLUSIVE


def interval_facts(interval: RatioInterval, settings: EngineSettings) -> dict[str, Any]:
    return {
        "latency_ratio": interval.ratio,
        "latency_interval": [interval.low, interval.high],
        "latency_conclusive": interval.conclusive,
        "latency_verdict": prune_speed(interval, settings).value,
    }


class SpeedBudget:
    """The speed check's deadline and its measurements, each capped by what remains of the budget."""

    def __init__(self, evaluator: Evaluator, settings: EngineSettings, check: Callable[[], None]) -> None:
        self.evaluator, self.settings, self.check = evaluator, settings, check
        self.started = time.perf_counter()
        self.seconds = settings.prune.speed_check_seconds

    @property
    def remaining(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def can_measure(self) -> bool:
        return self.remaining >= MIN_MEASURE_SECONDS

    def compare(self, src: Path, candidates: Sequence[Path]) -> LatencyComparison:
        """Candidates vs `src`, stopping once each interval is clear of the tolerance, or at the budget's end."""
        latency = self.settings.latency
        capped = latency.model_copy(update={"max_seconds": max(min(latency.max_seconds, self.remaining), 0.1)})
        return self.evaluator.latency_cache.compare(
            [src, *candidates],
            self.evaluator.latency_feed(),
            capped,
            self.evaluator.latency_batch_size,
            self.check,
            (latency.slowdown_tolerance,),
        )


def choose(options: list[tuple[int, RatioInterval]], settings: EngineSettings) -> tuple[int, RatioInterval]:
    """The round_to to keep among (round_to, interval vs the input) options, the requested one first.

    Options clearly slower than the input are dropped (unless all are); of the rest the lowest median wins,
    and the requested one is kept unless another is clearly below it (its interval's upper end under the
    requested one's lower end), so noise alone never changes the channel counts.
    """
    first = options[0]
    usable = [o for o in options if prune_speed(o[1], settings) != PruneSpeed.SLOWER] or options
    best = min(usable, key=lambda option: option[1].ratio)
    if first in usable and best is not first and not best[1].high < first[1].low:
        return first
    return best
