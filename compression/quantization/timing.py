"""Where a quantize search's time goes (phase timings), and the time bound of `auto`'s search.

`phase(name)` adds the seconds of its block to the phase timings active in this context (set by the budget
search with `collecting`), so the quantizers time their own stages (calibration, range refinement, bias
correction) without carrying a timer around; with no timings active it only runs the block.

`SearchClock` bounds `auto`'s search relative to the work itself, not to wall-clock seconds: its unit is the
measured cost of a candidate's first full attempt (prepare + calibrate + quantize + evaluate; the largest over
the candidates tried so far, so the order of the candidates does not shrink it), and once
`quant_search_time_factor` units have passed since the search started, no further attempt (exclusions,
bisection, sensitivity ranking) starts. Every candidate still gets its first attempt: that is the work the
plan asked for, once. Load slows the unit and the rest of the search alike, so the bound holds on a busy
machine too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any


class PhaseTimes:
    """Seconds per phase, summed over calls, and how many calls each phase had."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            name: {"seconds": round(seconds, 3), "calls": self.calls[name]} for name, seconds in self.seconds.items()
        }


_ACTIVE: ContextVar[PhaseTimes | None] = ContextVar("quantize_phase_times", default=None)


@contextlib.contextmanager
def collecting(times: PhaseTimes) -> Iterator[PhaseTimes]:
    """Make `times` the phase timings `phase` adds to inside this block."""
    token = _ACTIVE.set(times)
    try:
        yield times
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block into the active phase timings (none active: just run it)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        times = _ACTIVE.get()
        if times is not None:
            times.add(name, time.perf_counter() - started)


class SearchClock:
    """`auto`'s time bound: `factor` x the largest first full attempt's cost (at least `min_s`), counted from the
    search's start.

    `factor` None: no bound. The unit is known once `first_attempt` was called (after a candidate's first
    attempt was judged, with its cost since that candidate started); until then the clock never expires.
    """

    def __init__(self, factor: float | None, min_s: float = 0.0) -> None:
        self.factor = factor
        self.min_s = min_s  # the bound never falls below this (small models' first attempts are all cheap)
        self.started = time.perf_counter()
        self.unit_s: float | None = None
        self.cut: dict[str, Any] | None = None  # what the search would have tried next, once cut
        self.order: list[str] = []  # the modes whose searches went on after their first attempt, in that order

    def first_attempt(self, seconds: float) -> None:
        """A candidate's first full attempt took `seconds` (prepare + tune + quantize + evaluate)."""
        self.unit_s = seconds if self.unit_s is None else max(self.unit_s, seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def limit_s(self) -> float | None:
        if self.factor is None or self.unit_s is None:
            return None
        return max(self.factor * self.unit_s, self.min_s)

    def expired(self) -> bool:
        limit = self.limit_s
        return limit is not None and self.elapsed() > limit

    def stop(self, mode: str, next_step: str) -> None:
        """Record the first thing the bound kept from running (later ones are listed as skipped)."""
        if self.cut is None:
            self.cut = {"mode": mode, "would_try_next": next_step, "at_s": round(self.elapsed(), 3)}
        else:
            self.cut.setdefault("also_skipped", []).append(f"{mode}: {next_step}")

    def summary(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "unit_s": None if self.unit_s is None else round(self.unit_s, 3),
            "limit_s": None if self.limit_s is None else round(self.limit_s, 3),
            "elapsed_s": round(self.elapsed(), 3),
            "cut_by_time": self.cut is not None,
            "search_order": self.order,
            **({"cut": self.cut} if self.cut is not None else {}),
        }
