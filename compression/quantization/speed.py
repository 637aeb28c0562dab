"""Latency of candidates against the step's input, measured interleaved in one run."""

from __future__ import annotations

from pathlib import Path

from compression.metrics.evaluation import Evaluator
from compression.metrics.latency import LatencyStats
from compression.settings import EngineSettings


def interleaved_latency(paths: list[Path], evaluator: Evaluator, settings: EngineSettings) -> list[LatencyStats]:
    """Median latency of each path on the same feed and threads; the input model goes first."""
    return evaluator.latency(paths, runs=settings.latency.runs)


def confirmed_ratio(src: Path, candidate: Path, evaluator: Evaluator, settings: EngineSettings) -> float:
    """Latency ratio candidate / input from a second, three times longer interleaved run.

    A 0.2 ms model on a shared machine can read 5% slower by chance; a verdict that hands back
    the input (or picks a winner) is worth the extra runs.
    """
    before, after = evaluator.latency([src, candidate], runs=settings.latency.runs * 3)
    return after.median_ms / before.median_ms
