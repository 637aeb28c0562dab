"""Latency verdicts of quantized candidates against the step's input, from one adaptive interleaved measurement.

A single ratio is not a verdict: on a loaded machine a model timed against itself reads 0.90-1.10x. Each
candidate's ratio comes with a confidence interval (compression/metrics/latency.py), and a verdict is
`clearly slower` only when the whole interval is above `latency_slowdown_tolerance`, `clearly faster` only
when it is below 1 / `quant_min_speedup`. Anything else is within noise, or inconclusive when the measurement
hit its cap first; both count as "not worse", never as faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from compression.metrics.evaluation import Evaluator
from compression.metrics.latency import LatencyComparison, LatencyStats, RatioInterval
from compression.quantization.config import Objective
from compression.settings import EngineSettings


class SpeedVerdict(StrEnum):
    FASTER = "clearly faster"
    WITHIN_NOISE = "within noise"
    INCONCLUSIVE = "inconclusive"
    SLOWER = "clearly slower"


def speed_verdict(interval: RatioInterval, settings: EngineSettings) -> SpeedVerdict:
    if interval.clearly_above(settings.latency.slowdown_tolerance):
        return SpeedVerdict.SLOWER
    if interval.clearly_below(1.0 / settings.quantize.min_speedup):
        return SpeedVerdict.FASTER
    return SpeedVerdict.WITHIN_NOISE if interval.conclusive else SpeedVerdict.INCONCLUSIVE


def decision_thresholds(objective: Objective, settings: EngineSettings) -> tuple[float, ...]:
    """The ratios a decision under `objective` turns on: the measurement may stop once each interval clears them."""
    if objective == Objective.LATENCY:
        return (1.0 / settings.quantize.min_speedup,)
    return (settings.latency.slowdown_tolerance,)


def measure_candidates(
    src: Path,
    candidates: Sequence[Path],
    evaluator: Evaluator,
    objective: Objective,
    settings: EngineSettings,
    check: Callable[[], None] | None = None,
) -> LatencyComparison:
    """Every candidate against `src` in one interleaved session set (sessions created once)."""
    return evaluator.compare_latency([src, *candidates], check, decision_thresholds(objective, settings))


def latency_facts(
    base: LatencyStats, stats: LatencyStats, interval: RatioInterval, settings: EngineSettings
) -> dict[str, Any]:
    """One candidate's latency figures for the metrics."""
    return {
        "latency_ms": stats.median_ms,
        "latency_ratio": interval.ratio,
        "latency_interval": [interval.low, interval.high],
        "latency_interval_confidence": interval.confidence,
        "latency_conclusive": interval.conclusive,
        "latency_verdict": speed_verdict(interval, settings).value,
    }


def interleaved_latency(paths: list[Path], evaluator: Evaluator, settings: EngineSettings) -> list[LatencyStats]:
    """Per-model latency of `paths` (the first is the baseline) from the shared adaptive measurement.

    The measurement may stop once it is clear which side of 1.0 each ratio is on.
    """
    return evaluator.compare_latency(paths, decide_at=(1.0,)).models
