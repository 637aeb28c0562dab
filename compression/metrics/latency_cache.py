"""Latency comparisons kept for the job, so a pair measured once is not measured again.

A comparison is keyed by what determines it: the file contents of the baseline and the candidate (a digest,
so a model moved from a step's scratch dir to its output path is the same model, and a rewritten file is a
different one), the feed and the latency settings. `auto` measures its candidates against the step's input in
one session; when the pipeline then compares the job's input with that step's output, the pair is found here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compression.metrics.latency import LatencyComparison, LatencyStats, RatioInterval, StopReason, compare_latency
from compression.settings import LatencySettings


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "blake2b").hexdigest()


def feed_digest(feed: dict[str, np.ndarray]) -> str:
    digest = hashlib.blake2b()
    for name in sorted(feed):
        value = np.ascontiguousarray(feed[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


@dataclass
class _Pair:
    baseline: LatencyStats
    candidate: LatencyStats
    ratio: RatioInterval
    measurement: LatencyComparison


@dataclass
class LatencyCache:
    pairs: dict[tuple[str, str, str, str], _Pair] = field(default_factory=dict)
    alone: dict[tuple[str, str, str], LatencyStats] = field(default_factory=dict)  # a model's own stats

    def compare(
        self,
        paths: Sequence[Path],
        feed: dict[str, np.ndarray],
        settings: LatencySettings,
        batch_size: int,
        check: Callable[[], None] | None = None,
        decide_at: Sequence[float] = (),
    ) -> LatencyComparison:
        """`compare_latency`, timing only the candidates not yet compared with this baseline on this feed."""
        context = (feed_digest(feed), f"{settings.model_dump_json()}|{batch_size}")
        keys = [file_digest(path) for path in paths]
        base = keys[0]
        distinct = list(dict.fromkeys(key for key in keys[1:] if key != base))
        missing = [key for key in distinct if (base, key, *context) not in self.pairs]
        fresh: LatencyComparison | None = None
        if missing or (not distinct and (base, *context) not in self.alone):
            to_time = [paths[0], *(paths[keys.index(key)] for key in missing)]
            fresh = compare_latency(to_time, feed, settings, batch_size, check, decide_at)
            self.alone[(base, *context)] = fresh.models[0]
            for key, stats, ratio in zip(missing, fresh.models[1:], fresh.ratios, strict=True):
                self.pairs[(base, key, *context)] = _Pair(fresh.models[0], stats, ratio, fresh)
                self.alone.setdefault((key, *context), stats)
        return self._assemble(keys, context, fresh)

    def _assemble(
        self, keys: list[str], context: tuple[str, str], fresh: LatencyComparison | None
    ) -> LatencyComparison:
        base = keys[0]
        pairs = [self.pairs.get((base, key, *context)) for key in keys[1:]]
        known = [pair for pair in pairs if pair is not None]
        if fresh is not None:
            baseline = fresh.models[0]
        elif known:
            baseline = known[0].baseline
        else:
            baseline = self.alone[(base, *context)]
        same = RatioInterval(ratio=1.0, low=1.0, high=1.0, confidence=1.0, rounds=baseline.runs, conclusive=True)
        models, ratios = [baseline], []
        for pair in pairs:
            models.append(baseline if pair is None else pair.candidate)
            ratios.append(same if pair is None else pair.ratio)
        sources = [pair.measurement for pair in known]
        if fresh is not None:
            sources.append(fresh)
        if not sources:  # the baseline alone (or compared with itself), timed earlier or just now
            stopped = StopReason.SAME_MODEL if len(keys) > 1 else StopReason.NOTHING_TO_COMPARE
            return LatencyComparison(
                models=models, ratios=ratios, rounds=baseline.runs, wall_time_s=0.0, stopped=stopped, reused=True
            )
        unique = list({id(source): source for source in sources}.values())
        worst = next((s for s in unique if not s.conclusive), unique[-1])
        stopped = StopReason.SAME_MODEL if not known and not fresh.ratios and len(keys) > 1 else worst.stopped
        return LatencyComparison(
            models=models,
            ratios=ratios,
            rounds=max(s.rounds for s in unique),
            wall_time_s=fresh.wall_time_s if fresh is not None else 0.0,
            stopped=stopped,
            reused=fresh is None or len(unique) > 1,
        )
